"""Memory-mapped Megatron token shards (`name.bin` + `name.idx`, "MMIDIDX" version 1), as `shusheng-corpus` writes
them; read-only. The format (little-endian): header b"MMIDIDX\\x00\\x00", u64 version, u8 dtype code, u64 sequence
count S, u64 document-index count D, int32[S] lengths, int64[S] byte pointers, int64[D] document indices.
"""

from __future__ import annotations

import glob
import os
import struct
from pathlib import Path

import numpy as np

_HEADER = b"MMIDIDX\x00\x00"
_FIXED = struct.Struct("<9sQBQQ")
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
           8: np.uint16}


class Shard:
    """One `.bin`/`.idx` pair. `lengths[d]` is document d's token count; `read(d, start, end)` its tokens."""

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        try:
            idx = np.memmap(self.prefix + ".idx", dtype=np.uint8, mode="r")
        except FileNotFoundError:
            raise FileNotFoundError(f"token shard index {self.prefix}.idx does not exist") from None
        if idx.size < _FIXED.size:
            raise ValueError(f"{self.prefix}.idx is too short to be an MMIDIDX index")
        header, version, code, n_seq, n_doc = _FIXED.unpack(idx[: _FIXED.size].tobytes())
        if header != _HEADER or version != 1 or code not in _DTYPES:
            raise ValueError(f"{self.prefix}.idx is not an MMIDIDX v1 index (header {header!r}, v{version}, "
                             f"dtype code {code})")
        off = _FIXED.size
        seq_lengths = np.frombuffer(idx, np.int32, n_seq, off).astype(np.int64)
        self._pointers = np.frombuffer(idx, np.int64, n_seq, off + 4 * n_seq)
        doc_index = np.frombuffer(idx, np.int64, n_doc, off + 12 * n_seq)
        self.dtype = np.dtype(_DTYPES[code])
        # documents may span several sequences (contiguous in .bin): a document's length is their sum
        csum = np.concatenate([[0], np.cumsum(seq_lengths)])
        self.lengths = csum[doc_index[1:]] - csum[doc_index[:-1]]  # (N,) int64
        self._first_seq = doc_index[:-1]
        bin_path = self.prefix + ".bin"
        if not os.path.exists(bin_path):
            raise FileNotFoundError(f"token shard {bin_path} is missing beside its .idx")
        self._bin = np.memmap(bin_path, dtype=self.dtype, mode="r") if os.path.getsize(bin_path) else \
            np.empty(0, self.dtype)

    def __len__(self) -> int:
        return len(self.lengths)

    def read(self, doc: int, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of document `doc`, as int64."""
        if not len(self.lengths[doc : doc + 1]) or self.lengths[doc] == 0:
            return np.empty(0, np.int64)
        base = int(self._pointers[self._first_seq[doc]]) // self.dtype.itemsize
        return np.asarray(self._bin[base + start : base + end], dtype=np.int64)


def resolve_shards(path: str) -> list[str]:
    """Shard prefixes for a source path: a prefix, a folder (every `*.idx` in it), or a glob of `.idx` files.

    Raises:
        FileNotFoundError: nothing matches (the message says which forms are accepted).
    """
    p = Path(path)
    if p.is_dir():
        found = sorted(str(f)[:-4] for f in p.glob("*.idx"))
    elif any(c in path for c in "*?["):
        found = sorted(f[:-4] for f in glob.glob(path) if f.endswith(".idx"))
    elif Path(path + ".idx").exists():
        found = [path]
    elif path.endswith(".idx") and p.exists():
        found = [path[:-4]]
    else:
        found = []
    if not found:
        raise FileNotFoundError(
            f"no token shards at {path!r}: give a shard prefix (name of name.bin/name.idx), a folder of shards or a "
            "glob of .idx files (shusheng-corpus tokenize writes them)"
        )
    return found


class TokenSource:
    """The documents of several shards as one indexable collection (document ids run across shards)."""

    def __init__(self, path: str):
        self.path = path
        self.shards = [Shard(p) for p in resolve_shards(path)]
        self.lengths = np.concatenate([s.lengths for s in self.shards]) if self.shards else np.empty(0, np.int64)
        self._starts = np.cumsum([0] + [len(s) for s in self.shards])
        if not self.lengths.sum():
            raise ValueError(f"token shards at {path!r} hold no tokens")

    def __len__(self) -> int:
        return len(self.lengths)

    def read(self, doc: int, start: int, end: int) -> np.ndarray:
        s = int(np.searchsorted(self._starts, doc, side="right")) - 1
        return self.shards[s].read(doc - int(self._starts[s]), start, end)
