"""Tokenization as the pipeline's last step: the kept documents -> Megatron `.bin`/`.idx` shards in `tokens/`.

A weighted mixture groups documents by where they came from: `mixture: {NAME: {match: GLOB, weight: W}, ...}`,
where GLOB is matched against each document's `source` (its input file, unless the record named one).
"""

from __future__ import annotations

from fnmatch import fnmatch
from itertools import chain
from pathlib import Path

from .io import read_file
from .tokenize import load_encoder, tokenize_to_shards

OPTIONS = ("tokenizer", "shard_size_tokens", "docs_per_shard", "append_eos", "shuffle", "seed", "name", "mixture",
           "mixture_tokens")


def _groups(docs, mixture: dict) -> tuple[dict, dict]:
    groups: dict[str, list] = {name: [] for name in mixture}
    for doc in docs:
        name = next((n for n, m in mixture.items() if fnmatch(doc.source, m["match"])), None)
        if name is None:
            raise ValueError(f"tokenize.mixture: document {doc.id!r} from {doc.source!r} matches no mixture entry")
        groups[name].append(doc)
    return groups, {name: float(m["weight"]) for name, m in mixture.items()}


def run_tokenize(spec: dict, shards: list[Path], out: Path) -> dict:
    unknown = sorted(set(spec) - set(OPTIONS))
    if unknown:
        raise ValueError(f"tokenize: unknown option(s) {unknown}; options: {list(OPTIONS)}")
    if "tokenizer" not in spec:
        raise ValueError("tokenize: `tokenizer` is required (a tokenizer.json, a SentencePiece .model, or a folder)")
    opts = {k: v for k, v in spec.items() if k not in ("tokenizer", "mixture")}
    encoder = load_encoder(spec["tokenizer"])
    docs = chain.from_iterable(read_file(p) for p in shards)
    mixture = spec.get("mixture")
    if mixture:
        if not isinstance(mixture, dict) or not all(isinstance(m, dict) and {"match", "weight"} <= set(m)
                                                    for m in mixture.values()):
            raise ValueError("tokenize.mixture must map names to {match: GLOB, weight: W}")
        docs, opts["mixture"] = _groups(docs, mixture)
    return tokenize_to_shards(docs, encoder, out / "tokens", **opts)
