"""Tokenize documents into Megatron shards: `name-00000.bin/.idx`, ... and a `metadata.json` describing them.

Three orders:
  * streaming (default): documents in input order, tokenized in batches; memory stays flat;
  * `shuffle=True`: a seeded permutation over all documents (their token ids are held in memory, compactly);
  * `mixture={input: weight}`: `docs` is a mapping of named inputs; documents are sampled from each input (seeded
    permutation, repeated epoch by epoch if an input must be upsampled) until its *token* share reaches its weight,
    then all chosen documents are shuffled together. Without `mixture_tokens` the total is the largest one that
    repeats no document (the scarcest input, relative to its weight, is taken whole).
Documents are never split across shards: a shard is closed once it holds `shard_size_tokens` tokens (or
`docs_per_shard` documents). Documents whose text encodes to no tokens are skipped and counted.

Resumable: after a shard's `.bin`/`.idx` are in place, a marker `name-00000.done.json` records its counts, the
settings and a hash of its document ids. A rerun skips shards whose files and marker exist (in streaming mode
without tokenizing them again), and fails loudly if the settings or the input no longer match the marker.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..document import Document
from ..io import atomic_write
from .megatron import DTYPE_CODES, IndexedDatasetWriter, token_dtype


@dataclass
class _Item:
    """One tokenized document: what a shard needs of it (the text is dropped once encoded)."""

    id: str
    source: str
    ids: np.ndarray  # (T,) with EOS appended when asked
    input: str = ""  # mixture input name


class _Stream:
    """Documents tokenized lazily in batches, with `skip(n)` that consumes documents without tokenizing them."""

    def __init__(self, docs: Iterable[Document], encoder, dtype: np.dtype, eos: int | None, batch_size: int,
                 input_name: str = ""):
        self._docs = iter(docs)
        self._encoder, self._dtype, self._eos, self._batch_size = encoder, dtype, eos, batch_size
        self._input = input_name
        self._buffer: deque[_Item] = deque()

    def _fill(self) -> None:
        batch = [d for _, d in zip(range(self._batch_size), self._docs, strict=False)]
        if not batch:
            return
        for doc, ids in zip(batch, self._encoder.encode_batch([d.text for d in batch]), strict=True):
            arr = np.asarray(ids, dtype=self._dtype)
            if self._eos is not None and arr.size:  # an empty text stays empty, and is skipped
                arr = np.append(arr, np.asarray(self._eos, dtype=self._dtype))
            self._buffer.append(_Item(doc.id, doc.source, arr, self._input))

    def peek(self) -> _Item | None:
        if not self._buffer:
            self._fill()
        return self._buffer[0] if self._buffer else None

    def next(self) -> _Item | None:
        return self._buffer.popleft() if self.peek() is not None else None

    def skip(self, n: int) -> list[str]:
        """Consumes up to n documents; returns their ids."""
        ids = []
        while len(ids) < n and self._buffer:
            ids.append(self._buffer.popleft().id)
        ids += [d.id for _, d in zip(range(n - len(ids)), self._docs, strict=False)]
        return ids

    def drain(self) -> list[_Item]:
        return list(iter(self.next, None))


class _ListStream:
    """The same interface over documents already tokenized and ordered (shuffle and mixture)."""

    def __init__(self, items: list[_Item]):
        self._items, self._pos = items, 0

    def peek(self) -> _Item | None:
        return self._items[self._pos] if self._pos < len(self._items) else None

    def next(self) -> _Item | None:
        item = self.peek()
        self._pos += item is not None
        return item

    def skip(self, n: int) -> list[str]:
        ids = [it.id for it in self._items[self._pos:self._pos + n]]
        self._pos += len(ids)
        return ids


def _ids_hash(ids: Iterable[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode() + b"\n")
    return h.hexdigest()


def _mix(inputs: Mapping[str, list[_Item]], weights: Mapping[str, float], total_tokens: int | None,
         seed: int) -> tuple[list[_Item], dict[str, Any]]:
    """Samples documents of each input so its token share follows its weight; returns them shuffled together."""
    names = sorted(weights)
    wsum = sum(weights.values())
    share = {n: weights[n] / wsum for n in names}
    available = {n: sum(it.ids.size for it in inputs[n]) for n in names}
    if any(available[n] == 0 for n in names):
        raise ValueError(f"mixture input(s) without tokens: {[n for n in names if available[n] == 0]}")
    total = total_tokens if total_tokens is not None else min(available[n] / share[n] for n in names)
    chosen, report = [], {}
    for k, n in enumerate(names):
        quota, taken, picked = share[n] * total, 0, []
        rng = np.random.default_rng([seed, k])
        while taken < quota:  # one seeded permutation per epoch; several epochs when upsampling
            for j in rng.permutation(len(inputs[n])):
                if taken >= quota:
                    break
                picked.append(inputs[n][j])
                taken += inputs[n][j].ids.size
        chosen += picked
        report[n] = {"weight": weights[n], "available_tokens": available[n], "documents": len(picked),
                     "tokens": taken, "epochs": round(taken / available[n], 4)}
    got = sum(r["tokens"] for r in report.values())
    for r in report.values():
        r["share"] = round(r["tokens"] / got, 6)
    order = np.random.default_rng(seed).permutation(len(chosen))
    return [chosen[j] for j in order], report


@dataclass
class _Shard:
    prefix: str
    num_documents: int = 0
    num_tokens: int = 0
    num_input_documents: int = 0  # num_documents + skipped_empty: how many input documents a rerun skips
    skipped_empty: int = 0
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    ids_sha256: str = ""


def tokenize_to_shards(docs: Iterable[Document] | Mapping[str, Iterable[Document]], encoder, output_dir: str | Path,
                       shard_size_tokens: int | None = None, docs_per_shard: int | None = None,
                       append_eos: bool = True, name: str = "part", shuffle: bool = False, seed: int = 0,
                       mixture: Mapping[str, float] | None = None, mixture_tokens: int | None = None,
                       batch_size: int = 512, progress: bool = False) -> dict[str, Any]:
    """Tokenizes documents into Megatron `.bin`/`.idx` shards and writes `metadata.json`.

    Args:
        docs: Documents; with `mixture`, a mapping of input name -> documents.
        encoder: From `load_encoder` (anything with `encode_batch`, `vocab_size`, `eos_id`, `fingerprint()`).
        output_dir: Folder for the shards (created if missing).
        shard_size_tokens: Close a shard once it holds at least this many tokens. Exactly one of this and
            `docs_per_shard` must be given.
        docs_per_shard: Close a shard once it holds this many documents.
        append_eos: Append `encoder.eos_id` to every document.
        name: Shard file prefix: `{name}-00000.bin`.
        shuffle: Write documents in a seeded random order (implied by `mixture`).
        seed: Seed for shuffling and mixture sampling.
        mixture: Input name -> weight; token shares of the output follow the normalized weights.
        mixture_tokens: Total tokens of the mixture (inputs are repeated if needed); default: the most reachable
            without repeating any document.
        batch_size: Documents per `encode_batch` call.
        progress: Show a tqdm progress bar over input documents.

    Returns:
        The metadata written to `metadata.json`: tokenizer fingerprint and vocab size, dtype, per-shard and total
        document and token counts, counts per `Document.source`, and the mixture report.

    Raises:
        ValueError: Bad shard sizing, mixture inputs, missing EOS id, or an output folder written by other settings
            or from other input.
    """
    if (shard_size_tokens is None) == (docs_per_shard is None):
        raise ValueError("give exactly one of shard_size_tokens and docs_per_shard")
    if (shard_size_tokens or docs_per_shard) <= 0:
        raise ValueError("shard_size_tokens / docs_per_shard must be positive")
    if append_eos and encoder.eos_id is None:
        raise ValueError(f"{encoder!r} has no eos id; pass append_eos=False")
    if mixture is not None:
        if not isinstance(docs, Mapping) or set(docs) != set(mixture):
            raise ValueError("with mixture, docs must be a mapping with the same names as the weights "
                             f"(weights: {sorted(mixture)})")
        if any(w <= 0 for w in mixture.values()):
            raise ValueError(f"mixture weights must be positive: {dict(mixture)}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(encoder.vocab_size)
    eos = encoder.eos_id if append_eos else None
    fingerprint = encoder.fingerprint()
    settings = {"tokenizer": fingerprint, "dtype": str(dtype), "append_eos": append_eos,
                "shard_size_tokens": shard_size_tokens, "docs_per_shard": docs_per_shard, "shuffle": shuffle,
                "seed": seed, "mixture": dict(mixture) if mixture is not None else None,
                "mixture_tokens": mixture_tokens}

    def _wrap(it: Iterable[Document], desc: str) -> Iterable[Document]:
        if not progress:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, desc=desc, unit="doc")

    mixture_report = None
    if mixture is not None:
        inputs = {n: _Stream(_wrap(docs[n], n), encoder, dtype, eos, batch_size, n).drain() for n in sorted(docs)}
        inputs = {n: [it for it in items if it.ids.size] for n, items in inputs.items()}
        items, mixture_report = _mix(inputs, mixture, mixture_tokens, seed)
        stream: _Stream | _ListStream = _ListStream(items)
    elif shuffle:
        items = _Stream(_wrap(docs, "tokenize"), encoder, dtype, eos, batch_size).drain()
        stream = _ListStream([items[j] for j in np.random.default_rng(seed).permutation(len(items))])
    else:
        stream = _Stream(_wrap(docs, "tokenize"), encoder, dtype, eos, batch_size)

    shards: list[_Shard] = []
    skipped_tail = 0  # empty documents after the last shard (only when no shard holds a document after them)
    for k in itertools.count():
        shard = _Shard(f"{name}-{k:05d}")
        prefix = out / shard.prefix
        marker_path = out / f"{shard.prefix}.done.json"
        if marker_path.is_file() and all(Path(f"{prefix}{ext}").is_file() for ext in (".bin", ".idx")):
            marker = json.loads(marker_path.read_text())
            if marker["settings"] != settings:
                raise ValueError(f"{out} holds {shard.prefix} written with other settings ({marker['settings']}); "
                                 "use an empty output folder")
            done = _Shard(**marker["shard"])
            if _ids_hash(stream.skip(done.num_input_documents)) != done.ids_sha256:
                raise ValueError(f"the input differs from the one {shard.prefix} was written from; "
                                 "use an empty output folder")
            shards.append(done)
            continue
        if not _write_shard(stream, shard, prefix, dtype, shard_size_tokens, docs_per_shard):
            skipped_tail = shard.skipped_empty
            break
        atomic_write(marker_path, json.dumps({"settings": settings, "shard": vars(shard)}, indent=1) + "\n")
        shards.append(shard)

    sources: Counter = Counter()
    source_tokens: Counter = Counter()
    for s in shards:
        for src, c in s.sources.items():
            sources[src] += c["documents"]
            source_tokens[src] += c["tokens"]
    metadata = {
        "format": "megatron-mmidx-v1",
        "name": name,
        "tokenizer": {"fingerprint": fingerprint, "vocab_size": encoder.vocab_size, "eos_id": encoder.eos_id,
                      "bos_id": encoder.bos_id, "path": str(getattr(encoder, "path", ""))},
        "dtype": str(dtype),
        "dtype_code": DTYPE_CODES[dtype],
        "append_eos": append_eos,
        "shuffle": shuffle or mixture is not None,
        "seed": seed,
        "num_shards": len(shards),
        "num_documents": sum(s.num_documents for s in shards),
        "num_tokens": sum(s.num_tokens for s in shards),
        "skipped_empty": sum(s.skipped_empty for s in shards) + skipped_tail,
        "sources": {src: {"documents": sources[src], "tokens": source_tokens[src]} for src in sorted(sources)},
        "mixture": mixture_report,
        "shards": [{"prefix": s.prefix, "num_documents": s.num_documents, "num_tokens": s.num_tokens,
                    "sources": s.sources} for s in shards],
    }
    atomic_write(out / "metadata.json", json.dumps(metadata, indent=2) + "\n")
    return metadata


def _write_shard(stream: _Stream | _ListStream, shard: _Shard, prefix: Path, dtype: np.dtype,
                 shard_size_tokens: int | None, docs_per_shard: int | None) -> bool:
    """Fills one shard from the stream; False (and nothing written) when no document with tokens was left.

    Empty documents right after a full shard are counted in it, so every later shard starts with a real document.
    """
    writer = IndexedDatasetWriter(prefix, dtype)
    ids, sources = [], Counter()
    tokens_by_source: Counter = Counter()
    while (shard_size_tokens is None or writer.num_tokens < shard_size_tokens) and (
            docs_per_shard is None or len(writer) < docs_per_shard):
        item = stream.next()
        if item is None:
            break
        ids.append(item.id)
        if item.ids.size == 0:
            shard.skipped_empty += 1
            continue
        writer.add_document(item.ids)
        sources[item.source] += 1
        tokens_by_source[item.source] += int(item.ids.size)
    while (item := stream.peek()) is not None and item.ids.size == 0:
        ids.append(stream.next().id)
        shard.skipped_empty += 1
    if len(writer) == 0:
        writer.abort()
        return False
    writer.finalize()
    shard.num_documents, shard.num_tokens = len(writer), writer.num_tokens
    shard.num_input_documents, shard.ids_sha256 = len(ids), _ids_hash(ids)
    shard.sources = {s: {"documents": sources[s], "tokens": tokens_by_source[s]} for s in sorted(sources)}
    return True

