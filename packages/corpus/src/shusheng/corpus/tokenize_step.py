"""Tokenization as the pipeline's last step: the kept documents -> Megatron `.bin`/`.idx` shards in `tokens/`."""

from __future__ import annotations

from itertools import chain
from pathlib import Path

from .io import read_file
from .tokenize import load_encoder, tokenize_to_shards

OPTIONS = ("tokenizer", "shard_size_tokens", "docs_per_shard", "append_eos", "shuffle", "seed", "name")


def run_tokenize(spec: dict, shards: list[Path], out: Path) -> dict:
    unknown = sorted(set(spec) - set(OPTIONS))
    if unknown:
        raise ValueError(f"tokenize: unknown option(s) {unknown}; options: {list(OPTIONS)}")
    if "tokenizer" not in spec:
        raise ValueError("tokenize: `tokenizer` is required (a tokenizer.json, a SentencePiece .model, or a folder)")
    opts = {k: v for k, v in spec.items() if k != "tokenizer"}
    encoder = load_encoder(spec["tokenizer"])
    docs = chain.from_iterable(read_file(p) for p in shards)
    return tokenize_to_shards(docs, encoder, out / "tokens", **opts)
