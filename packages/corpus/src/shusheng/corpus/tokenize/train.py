"""Train a byte-level BPE tokenizer, and load an existing one for packing.

`train_tokenizer` uses the Hugging Face `tokenizers` library (byte-level BPE, GPT-2 style pre-tokenization) and
reserves the special tokens first, so they get ids 0..len(specials)-1 and always encode to single ids. The defaults
are `<unk>`, `<s>`, `</s>` and InternLM2's chat tokens.

`load_encoder` is the small loader the packer needs (this package does not depend on `shusheng.model`): a
SentencePiece `.model` (InternLM2's: vocab 92544, bos 1, eos 2) or a `tokenizer.json` / a folder holding one. Text is
encoded as-is, with no BOS: SentencePiece with plain `sp.encode(text)`, `tokenizers` with `add_special_tokens=False`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from ..io import atomic_write

DEFAULT_SPECIALS = (
    "<unk>", "<s>", "</s>",
    "<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>",
)
CONFIG_NAME = "tokenizer_config.json"
_BOS_GUESSES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
_EOS_GUESSES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>")


def train_tokenizer(texts: Iterable[str], vocab_size: int, output_dir: str | Path,
                    special_tokens: Iterable[str] = DEFAULT_SPECIALS, min_frequency: int = 2,
                    bos_token: str | None = "<s>", eos_token: str | None = "</s>") -> Path:
    """Trains a byte-level BPE tokenizer and writes `tokenizer.json` and `tokenizer_config.json`.

    Args:
        texts: Training text, streamed once.
        vocab_size: Final vocabulary size, special tokens and the 256 byte symbols included.
        output_dir: Folder to write into (created if missing).
        special_tokens: Reserved tokens; they get the first ids, in this order.
        min_frequency: Minimum pair count for a merge.
        bos_token: Beginning-of-sequence token recorded in the config (must be one of `special_tokens`), or None.
        eos_token: End-of-sequence token recorded in the config (must be one of `special_tokens`), or None.

    Returns:
        Path of the written `tokenizer.json`.

    Raises:
        ValueError: `vocab_size` cannot hold the byte alphabet plus the specials, or bos/eos are not specials.
    """
    specials = list(dict.fromkeys(special_tokens))
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the {len(alphabet)} byte symbols plus "
                         f"{len(specials)} special tokens")
    for role, token in (("bos_token", bos_token), ("eos_token", eos_token)):
        if token is not None and token not in specials:
            raise ValueError(f"{role} {token!r} is not among the special tokens {specials}")

    tok = tokenizers.Tokenizer(models.BPE())
    # add_prefix_space=False keeps decode(encode(text)) == text.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tokenizer.json"
    atomic_write(path, tok.to_str(pretty=True))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos_token,
        "eos_token": eos_token,
        "unk_token": "<unk>" if "<unk>" in specials else None,
        "additional_special_tokens": [t for t in specials if t not in (bos_token, eos_token, "<unk>")],
        "add_bos_token": False,
        "add_eos_token": False,
    }
    atomic_write(out / CONFIG_NAME, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return path


class Encoder:
    """A loaded tokenizer, reduced to what packing needs.

    Attributes:
        path: The tokenizer file (`.model` or `tokenizer.json`).
        vocab_size: Number of ids (added tokens included).
        bos_id: Beginning-of-sequence id, or None.
        eos_id: End-of-sequence id, or None.
    """

    path: Path
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:  # pragma: no cover - abstract
        """Token ids of each text, without BOS or EOS."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 (hex) of the tokenizer file's bytes: tags shards with the exact tokenizer that made them."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, vocab_size={self.vocab_size})"


class SentencePieceEncoder(Encoder):
    def __init__(self, path: Path):
        self.path = path
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self.sp.vocab_size()
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(list(texts))


class HFEncoder(Encoder):
    def __init__(self, path: Path):
        self.path = path
        self.tok = tokenizers.Tokenizer.from_file(str(path))
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        config_path = path.parent / CONFIG_NAME
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.bos_id = self._special_id(config.get("bos_token"), _BOS_GUESSES)
        self.eos_id = self._special_id(config.get("eos_token"), _EOS_GUESSES)

    def _special_id(self, token: str | dict | None, guesses: tuple[str, ...]) -> int | None:
        if isinstance(token, dict):  # HF writes AddedToken objects as {"content": ...}
            token = token.get("content")
        for t in [token] if token else guesses:
            if (token_id := self.tok.token_to_id(t)) is not None:
                return token_id
        return None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]


def load_encoder(path: str | Path) -> Encoder:
    """Loads a SentencePiece `.model`, a `tokenizer.json`, or a folder holding one of them.

    Args:
        path: The tokenizer file or folder (`tokenizer.json` is preferred over `tokenizer.model` in a folder).

    Returns:
        An `Encoder` with `encode_batch`, `vocab_size`, `bos_id`, `eos_id` and `fingerprint()`.

    Raises:
        FileNotFoundError: Nothing loadable at `path`.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("tokenizer.json", "tokenizer.model") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds neither tokenizer.json nor tokenizer.model")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}")
    return HFEncoder(path) if path.suffix == ".json" else SentencePieceEncoder(path)
