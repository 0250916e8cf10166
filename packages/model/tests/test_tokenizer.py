"""Tokenizer tests: the real InternLM2 SentencePiece model (from ../shared/data) and a tiny HF BPE built here."""

import json
import random

import pytest
from tokenizers import Tokenizer as HFRaw
from tokenizers import decoders, models, pre_tokenizers, trainers

from shusheng.model.tokenizer import HFTokenizer, IncrementalDetokenizer, SentencePieceTokenizer, load_tokenizer

CHAT_TOKENS = {
    "<|plugin|>": 92538,
    "<|interpreter|>": 92539,
    "<|action_end|>": 92540,
    "<|action_start|>": 92541,
    "<|im_end|>": 92542,
    "<|im_start|>": 92543,
}
TEXTS = [
    "Hello world! 你好，世界。",
    "  leading spaces, trailing space ",
    "emoji 😀🎉 and a family 👨‍👩‍👧 in one line",
    "tabs\tand\nnewlines\n\n  indented\r\n",
    "混合 English 和中文 with 数字 12345 and symbols ©®™ ∑√∞",
    "<|im_start|>user\nhi 👋<|im_end|>\n<|im_start|>assistant\n 好的<|im_end|>",
]



def test_internlm2_plain_ids(tok):
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.encode("Hello world! 你好，世界。") == [9843, 2028, 346, 262, 77230, 60353, 68339, 60355]
    assert tok.encode("Hello world! 你好，世界。", add_bos=True) == [1, *tok.encode("Hello world! 你好，世界。")]
    assert tok.encode("") == []


def test_internlm2_properties(tok):
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (92544, 1, 2, 2)
    assert tok.stop_ids == [2, 92542]
    assert tok.chat_template == "internlm2"
    assert tok.special_tokens == {"<unk>": 0, "<s>": 1, "</s>": 2, **CHAT_TOKENS}
    assert tok.id_to_token(92538) == "<|plugin|>" and tok.id_to_token(3) == "<0x00>"
    assert tok.token_to_id("<|im_start|>") == 92543 and tok.token_to_id("▁Hello") == 22190
    assert tok.is_special(92540) and tok.is_special(1) and not tok.is_special(9843)
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.token_to_id("<|no_such_token|>")
    with pytest.raises(ValueError, match="out of range"):
        tok.id_to_token(92544)


@pytest.mark.parametrize("token", list(CHAT_TOKENS))
def test_internlm2_special_token_is_one_id(tok, token):
    assert tok.encode(token) == [CHAT_TOKENS[token]]
    assert tok.decode([CHAT_TOKENS[token]]) == token


def test_internlm2_text_between_specials_is_encoded_per_chunk(tok, sp_ref):
    assert tok.encode("<|im_start|>user\nhi<|im_end|>") == [92543, *sp_ref.encode("user\nhi"), 92542]
    # No stripping around special tokens: the spaces stay with their chunks.
    assert tok.encode("a <|im_end|> b") == [*sp_ref.encode("a "), 92542, *sp_ref.encode(" b")]
    assert tok.encode("<s>x</s>") == [1, *sp_ref.encode("x"), 2]


@pytest.mark.parametrize("text", TEXTS)
def test_internlm2_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_internlm2_decode_specials(tok, sp_ref):
    ids = [1, 92543, *sp_ref.encode("user\nhi"), 92542, 2]
    assert tok.decode(ids) == "<s><|im_start|>user\nhi<|im_end|></s>"
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([5, 100000])


def _stream(tokenizer, ids, **kwargs):
    detok = IncrementalDetokenizer(tokenizer, **kwargs)
    return [detok.add(i) for i in ids], detok.flush()


@pytest.mark.parametrize("text", TEXTS)
def test_internlm2_detokenizer_matches_decode(tok, text):
    ids = tok.encode(text, add_bos=True)
    pieces, rest = _stream(tok, ids)
    assert "".join(pieces) + rest == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)  # never half a character
    pieces, rest = _stream(tok, ids, skip_special_tokens=True)
    assert "".join(pieces) + rest == tok.decode(ids, skip_special_tokens=True)


def test_internlm2_detokenizer_holds_partial_characters(tok):
    ids = tok.encode("😀")
    assert ids == [243, 162, 155, 131]  # byte-fallback pieces <0xF0> <0x9F> <0x98> <0x80>
    assert _stream(tok, ids) == (["", "", "", "😀"], "")
    assert _stream(tok, ids[:2]) == (["", ""], "\ufffd\ufffd")  # flush gives what is left, as decode would


@pytest.mark.parametrize("text", [*TEXTS, "a😀b 你好😀😀 c"])
def test_internlm2_detokenizer_add_many_equals_add(tok, text):
    """After the same ids, chunks added at once have released exactly the text single adds have (partial
    characters held back the same way)."""
    ids = tok.encode(text, add_bos=True)
    single = IncrementalDetokenizer(tok)
    released = [""]
    for i in ids:
        released.append(released[-1] + single.add(i))
    rng = random.Random(len(ids))
    many, got, n = IncrementalDetokenizer(tok), "", 0
    while n < len(ids):
        k = rng.randint(1, 5)
        got += many.add_many(ids[n : n + k])
        n = min(n + k, len(ids))
        assert got == released[n]
    assert got + many.flush() == tok.decode(ids)


def test_internlm2_detokenizer_decodes_short_windows(tok, monkeypatch):
    ids = tok.encode(" ".join(TEXTS) * 40)
    sizes = []
    decode = tok.decode
    monkeypatch.setattr(tok, "decode", lambda ids, skip=False: sizes.append(len(ids)) or decode(ids, skip))
    pieces, rest = _stream(tok, ids)
    monkeypatch.undo()
    assert "".join(pieces) + rest == tok.decode(ids)
    assert len(ids) > 1000 and max(sizes) <= 16  # O(1) per token: never the whole sequence


def test_internlm2_save_and_load(tok, tmp_path):
    tok.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
    config = json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"]["92538"]["content"] == "<|plugin|>"
    assert (config["bos_token"], config["eos_token"], config["chat_template_name"]) == ("<s>", "</s>", "internlm2")
    for path in (tmp_path / "ckpt", tmp_path / "ckpt" / "tokenizer.model"):
        again = load_tokenizer(path)
        for text in TEXTS:
            assert again.encode(text, add_bos=True) == tok.encode(text, add_bos=True)
        assert again.special_tokens == tok.special_tokens
        assert (again.bos_id, again.eos_id, again.pad_id, again.chat_template) == (1, 2, 2, "internlm2")
        assert again.fingerprint() == tok.fingerprint()


def test_internlm2_config_overrides(tok, tmp_path):
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["92537"] = {"content": "<|custom|>", "special": True}
    config["pad_token"] = {"content": "<unk>", "__type": "AddedToken"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    custom = load_tokenizer(tmp_path)
    assert custom.encode("a<|custom|>") == [*tok.encode("a"), 92537]
    assert custom.pad_id == 0
    assert custom.fingerprint() != tok.fingerprint()


SENTENCES = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "你好，世界。今天天气很好。",
    "Emoji are fun 😀🎉 and so are tabs\tand newlines\n.",
    "user\nhi there, assistant\nhello!",
] * 20
HF_SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture
def hf_dir(tmp_path):
    """A tiny byte-level BPE saved as tokenizer.json (no config file)."""
    raw = HFRaw(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=HF_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(SENTENCES, trainer)
    raw.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def test_hf_tokenizer_basics(hf_dir):
    tok = load_tokenizer(hf_dir)
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 1)  # guessed from <s> / </s>
    assert tok.special_tokens == {"<s>": 0, "</s>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    assert tok.stop_ids == [1, 3] and tok.chat_template == "chatml"
    assert tok.encode("<|im_start|>user\nhi<|im_end|>") == [2, *tok.encode("user\nhi"), 3]
    assert tok.encode("hi", add_bos=True) == [0, *tok.encode("hi")]
    assert tok.decode([0, *tok.encode("hi"), 1], skip_special_tokens=True) == "hi"
    assert tok.decode([0, *tok.encode("hi"), 1]) == "<s>hi</s>"


@pytest.mark.parametrize("text", TEXTS)
def test_hf_round_trip_and_detokenizer(hf_dir, text):
    tok = load_tokenizer(hf_dir / "tokenizer.json")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    pieces, rest = _stream(tok, ids)
    assert "".join(pieces) + rest == text
    assert not any("\ufffd" in p for p in pieces)


def test_hf_save_load_with_config(hf_dir, tmp_path):
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))
    tok = load_tokenizer(hf_dir)
    assert (tok.bos_id, tok.eos_id, tok.stop_ids) == (2, 3, [3])
    tok.save(tmp_path / "out")
    again = load_tokenizer(tmp_path / "out")
    assert (again.bos_id, again.eos_id, again.pad_id) == (2, 3, 3)
    assert again.encode(TEXTS[-1]) == tok.encode(TEXTS[-1])
    assert again.fingerprint() == tok.fingerprint()


def test_fingerprints_differ_between_tokenizers(hf_dir, tok):
    assert load_tokenizer(hf_dir).fingerprint() != tok.fingerprint()


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: .*nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no tokenizer.model .* or tokenizer.json"):
        load_tokenizer(tmp_path)


def test_bad_files(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="vocab.txt: not a tokenizer file"):
        load_tokenizer(tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="tokenizer_config.json: not a tokenizer file"):
        load_tokenizer(tmp_path / "tokenizer_config.json")
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="tokenizer.model: cannot load as SentencePieceTokenizer"):
        load_tokenizer(tmp_path)


def test_bad_config(hf_dir):
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(ValueError, match="eos_token '<\\|nope\\|>' is not in the vocabulary"):
        load_tokenizer(hf_dir)
    (hf_dir / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json: invalid JSON"):
        load_tokenizer(hf_dir)
