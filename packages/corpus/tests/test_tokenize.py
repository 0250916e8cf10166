"""Tokenizer training/loading and packing into shards: specials, round trips, exact counts, order, resumability."""

import hashlib
import json

import numpy as np
import pytest

from shusheng.corpus.document import Document
from shusheng.corpus.tokenize import DEFAULT_SPECIALS, IndexedDatasetReader, load_encoder, train_tokenizer
from shusheng.corpus.tokenize.pack import tokenize_to_shards

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "书生浦语是一个大语言模型。",
    "Pack my box with five dozen liquor jugs!",
] * 50


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    train_tokenizer(iter(CORPUS), vocab_size=600, output_dir=out)
    return out


def test_bpe_specials_are_single_reserved_ids(bpe_dir):
    enc = load_encoder(bpe_dir)
    tok = enc.tok
    assert [tok.token_to_id(s) for s in DEFAULT_SPECIALS] == list(range(len(DEFAULT_SPECIALS)))
    text = "<|im_start|>user\nhi<|im_end|>\n<|action_start|><|interpreter|>x<|action_end|></s>"
    ids = enc.encode_batch([text])[0]
    for s in ("<|im_start|>", "<|im_end|>", "<|action_start|>", "<|interpreter|>", "<|action_end|>", "</s>"):
        assert ids.count(tok.token_to_id(s)) == 1
    assert (enc.bos_id, enc.eos_id) == (tok.token_to_id("<s>"), tok.token_to_id("</s>"))
    config = json.loads((bpe_dir / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"]) == ("<s>", "</s>")


def test_bpe_round_trips_text(bpe_dir):
    enc = load_encoder(bpe_dir / "tokenizer.json")
    texts = CORPUS[:4] + ["  leading spaces, ünïcödé and emoji 🦊\n\ttabs", "unseen: zxqv 12345"]
    for text, ids in zip(texts, enc.encode_batch(texts), strict=True):
        assert enc.tok.decode(ids, skip_special_tokens=False) == text
    assert len(enc.encode_batch(["The quick brown fox"])[0]) < len("The quick brown fox")  # merges were learned
    assert enc.vocab_size <= 600
    assert enc.fingerprint() == hashlib.sha256((bpe_dir / "tokenizer.json").read_bytes()).hexdigest()


def test_bpe_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="smaller than the 256 byte symbols"):
        train_tokenizer(["x"], vocab_size=100, output_dir=tmp_path)
    with pytest.raises(ValueError, match="eos_token '<eos>' is not among"):
        train_tokenizer(["x"], vocab_size=300, output_dir=tmp_path, eos_token="<eos>")


class ToyEncoder:
    """One id per character (ord % 1000 + 1), eos 0; counts its calls so tests can see what was re-tokenized."""

    vocab_size, bos_id, eos_id = 1001, None, 0

    def __init__(self):
        self.calls = 0

    def encode_batch(self, texts):
        self.calls += len(texts)
        return [[ord(c) % 1000 + 1 for c in t] for t in texts]

    def fingerprint(self):
        return "toy-v1"


def make_docs(n, source="web", seed=0, prefix="d"):
    rng = np.random.default_rng(seed)
    return [Document(id=f"{prefix}{i}", text="x" * int(rng.integers(1, 40)), source=source) for i in range(n)]


def read_all(out, meta):
    return [IndexedDatasetReader(out / s["prefix"])[i].tolist() for s in meta["shards"]
            for i in range(s["num_documents"])]


def test_metadata_counts_are_exact(tmp_path):
    docs = make_docs(30, "web") + make_docs(12, "code", seed=1, prefix="c") + [Document(id="e", text="", source="web")]
    meta = tokenize_to_shards(docs, ToyEncoder(), tmp_path, shard_size_tokens=100)
    lengths = [len(d.text) + 1 for d in docs if d.text]
    assert meta["num_documents"] == 42 and meta["num_tokens"] == sum(lengths) and meta["skipped_empty"] == 1
    assert meta["sources"] == {"web": {"documents": 30, "tokens": sum(lengths[:30])},
                               "code": {"documents": 12, "tokens": sum(lengths[30:])}}
    assert meta["dtype"] == "uint16" and meta["dtype_code"] == 8
    assert meta["tokenizer"]["fingerprint"] == "toy-v1" and meta["tokenizer"]["vocab_size"] == 1001
    # Shards close once they reach 100 tokens; documents are never split.
    expected, cur = [], []
    for n in lengths:
        cur.append(n)
        if sum(cur) >= 100:
            expected.append(cur)
            cur = []
    expected += [cur] if cur else []
    assert [s["num_tokens"] for s in meta["shards"]] == [sum(c) for c in expected]
    assert [s["num_documents"] for s in meta["shards"]] == [len(c) for c in expected]
    assert [s["prefix"] for s in meta["shards"]] == [f"part-{k:05d}" for k in range(len(expected))]
    for s in meta["shards"]:
        r = IndexedDatasetReader(tmp_path / s["prefix"])
        assert (len(r), r.num_tokens) == (s["num_documents"], s["num_tokens"])
    assert json.loads((tmp_path / "metadata.json").read_text()) == meta
    # Input order, text + EOS.
    assert read_all(tmp_path, meta) == [[ord(c) % 1000 + 1 for c in d.text] + [0] for d in docs if d.text]


def test_docs_per_shard_and_no_eos(tmp_path):
    meta = tokenize_to_shards(make_docs(10), ToyEncoder(), tmp_path, docs_per_shard=4, append_eos=False, name="w")
    assert [s["num_documents"] for s in meta["shards"]] == [4, 4, 2]
    assert (tmp_path / "w-00002.idx").is_file() and 0 not in sum(read_all(tmp_path, meta), [])
    with pytest.raises(ValueError, match="exactly one of"):
        tokenize_to_shards(make_docs(2), ToyEncoder(), tmp_path / "x")


def test_shuffle_is_deterministic_and_a_permutation(tmp_path):
    docs = make_docs(50)
    runs = [read_all(tmp_path / f"r{k}", tokenize_to_shards(docs, ToyEncoder(), tmp_path / f"r{k}", docs_per_shard=7,
                                                             shuffle=True, seed=seed))
            for k, seed in enumerate((3, 3, 4))]
    plain = read_all(tmp_path / "p", tokenize_to_shards(docs, ToyEncoder(), tmp_path / "p", docs_per_shard=7))
    assert runs[0] == runs[1] and runs[0] != runs[2] and runs[0] != plain
    assert sorted(runs[0]) == sorted(plain)


def test_mixture_follows_token_weights_deterministically(tmp_path):
    inputs = {"web": make_docs(400, "web", seed=1), "code": make_docs(300, "code", seed=2, prefix="c"),
              "math": make_docs(100, "math", seed=3, prefix="m")}
    weights = {"web": 0.5, "code": 0.3, "math": 0.2}
    metas = [tokenize_to_shards(inputs, ToyEncoder(), tmp_path / f"m{k}", shard_size_tokens=2000, mixture=weights,
                                seed=7) for k in range(2)]
    assert read_all(tmp_path / "m0", metas[0]) == read_all(tmp_path / "m1", metas[1])
    meta = metas[0]
    tokens = {src: c["tokens"] for src, c in meta["sources"].items()}
    total = sum(tokens.values())
    assert total == meta["num_tokens"]
    for src, w in weights.items():
        assert abs(tokens[src] / total - w) < 0.01, (src, tokens[src] / total)
        assert meta["mixture"][src]["tokens"] == tokens[src]
    # No upsampling by default: the scarcest input (math, relative to its weight) is taken whole, others subsampled.
    assert meta["mixture"]["math"]["documents"] == 100 and meta["mixture"]["web"]["documents"] < 400
    # Sources are interleaved, not written one after another.
    assert len(meta["shards"][0]["sources"]) == 3
    # An explicit total upsamples by repeating documents.
    big = tokenize_to_shards(inputs, ToyEncoder(), tmp_path / "big", shard_size_tokens=10**6, mixture=weights,
                             mixture_tokens=3 * total)
    assert big["mixture"]["math"]["documents"] > 100 and abs(big["num_tokens"] - 3 * total) < 200
    with pytest.raises(ValueError, match="same names"):
        tokenize_to_shards(inputs, ToyEncoder(), tmp_path / "bad", docs_per_shard=5, mixture={"web": 1.0})


def test_rerun_skips_complete_shards(tmp_path):
    docs = make_docs(40)
    first = tokenize_to_shards(docs, ToyEncoder(), tmp_path, docs_per_shard=10)
    assert first["num_shards"] == 4
    # Simulate a crash while shard 2 was written: its marker is gone, its files half there.
    (tmp_path / "part-00002.done.json").unlink()
    (tmp_path / "part-00002.bin").write_bytes(b"garbage")
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("part-0000[013].*")}
    enc = ToyEncoder()
    again = tokenize_to_shards(docs, enc, tmp_path, docs_per_shard=10, batch_size=5)
    assert again == first
    # Shards 0 and 1 were skipped without tokenizing; shard 2 was tokenized again, plus one batch read ahead.
    assert enc.calls == 10 + 5
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("part-0000[013].*")} == mtimes
    assert read_all(tmp_path, again) == [[ord(c) % 1000 + 1 for c in d.text] + [0] for d in docs]
    with pytest.raises(ValueError, match="other settings"):
        tokenize_to_shards(docs, ToyEncoder(), tmp_path, docs_per_shard=10, append_eos=False)
    with pytest.raises(ValueError, match="input differs"):
        tokenize_to_shards(make_docs(40, prefix="z"), ToyEncoder(), tmp_path, docs_per_shard=10)


def test_rerun_after_shuffle_skips_writing(tmp_path):
    docs = make_docs(30)
    first = tokenize_to_shards(docs, ToyEncoder(), tmp_path, docs_per_shard=8, shuffle=True, seed=1)
    (tmp_path / "part-00001.done.json").unlink()
    mtime = (tmp_path / "part-00000.bin").stat().st_mtime_ns
    again = tokenize_to_shards(docs, ToyEncoder(), tmp_path, docs_per_shard=8, shuffle=True, seed=1)
    assert again == first and (tmp_path / "part-00000.bin").stat().st_mtime_ns == mtime
