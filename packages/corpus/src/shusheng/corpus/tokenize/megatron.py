"""Megatron-LM's indexed dataset (`.bin` + `.idx`, "MMIDIDX" version 1): a writer and a memory-mapped reader.

The format, as Megatron-LM's `megatron/core/datasets/indexed_dataset.py` reads it (all integers little-endian):

    .bin  the token ids of every sequence, back to back, in the dtype named by the index
    .idx  9 bytes   b"MMIDIDX\\x00\\x00"
          u64       version = 1
          u8        dtype code (see DTYPE_CODES)
          u64       S, number of sequences
          u64       D, number of entries of document_indices (= documents + 1)
          int32[S]  sequence_lengths, in tokens
          int64[S]  sequence_pointers, byte offset of each sequence in .bin
          int64[D]  document_indices: document d is sequences [document_indices[d], document_indices[d + 1])

The writer stores one sequence per document, so document_indices = [0, 1, ..., N]; the reader also handles files
with several sequences per document. Files are written under temporary names and renamed once complete, `.bin`
first, so a `.idx` on disk always has its complete `.bin` beside it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# Megatron's DType enum. There is no unsigned 32-bit code: vocabularies above 65536 ids are stored as int32 (code 4),
# which holds any id below 2**31 (some write-ups say "uint32"; Megatron could not read such a file).
DTYPE_CODES = {np.dtype(t): code for t, code in (
    (np.uint8, 1), (np.int8, 2), (np.int16, 3), (np.int32, 4), (np.int64, 5), (np.float64, 6), (np.float32, 7),
    (np.uint16, 8))}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
_FIXED = struct.Struct("<9sQBQQ")  # header, version, dtype code, sequence count, document_indices count: 34 bytes


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else int32 (code 4).

    Megatron's `DType.optimal_dtype` switches a little earlier (`< 65500`); both are readable by Megatron since
    the reader takes the dtype from the index.
    """
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


class IndexedDatasetWriter:
    """Writes documents of token ids to `prefix.bin` / `prefix.idx`.

    Usable as a context manager: leaving the block finalizes, or aborts if an exception was raised. A writer that
    is never finalized leaves only its temporary files (`prefix.bin.tmp`, removed by `abort()`).

    Args:
        prefix: Path without extension.
        dtype: Token dtype, one of `DTYPE_CODES` (see `token_dtype`).
    """

    def __init__(self, prefix: str | Path, dtype: np.dtype | type = np.uint16):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"dtype {self.dtype} has no Megatron code; use one of {sorted(map(str, DTYPE_CODES))}")
        self._limits = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
        self._bin_tmp = self.prefix + ".bin.tmp"
        self._bin = open(self._bin_tmp, "wb")
        self.sequence_lengths: list[int] = []
        self.num_tokens = 0

    def add_document(self, ids) -> None:
        """Appends one document (a sequence of token ids).

        Raises:
            ValueError: An id does not fit the dtype.
        """
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"a document is a 1-D sequence of ids, got shape {arr.shape}")
        if arr.size and self._limits is not None and (arr.min() < self._limits.min or arr.max() > self._limits.max):
            raise ValueError(f"token ids in [{arr.min()}, {arr.max()}] do not fit {self.dtype}")
        if arr.size >= 2**31:
            raise ValueError("a document longer than 2**31 - 1 tokens cannot be indexed (int32 lengths)")
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes())
        self.sequence_lengths.append(arr.size)
        self.num_tokens += arr.size

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def finalize(self) -> None:
        """Writes the index, then renames `.bin` and `.idx` into place."""
        self._bin.close()
        lengths = np.asarray(self.sequence_lengths, dtype=np.int32)  # (S,)
        pointers = np.zeros(len(lengths), dtype=np.int64)  # (S,) byte offsets
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_indices = np.arange(len(lengths) + 1, dtype=np.int64)  # (N + 1,) one sequence per document
        fixed = _FIXED.pack(INDEX_HEADER, INDEX_VERSION, DTYPE_CODES[self.dtype], len(lengths), len(doc_indices))
        idx_tmp = self.prefix + ".idx.tmp"
        with open(idx_tmp, "wb") as f:
            f.write(fixed + lengths.tobytes() + pointers.tobytes() + doc_indices.tobytes())
        os.replace(self._bin_tmp, self.prefix + ".bin")
        os.replace(idx_tmp, self.prefix + ".idx")

    def abort(self) -> None:
        """Closes and removes the temporary files; nothing appears under the final names."""
        self._bin.close()
        for tmp in (self._bin_tmp, self.prefix + ".idx.tmp"):
            if os.path.exists(tmp):
                os.remove(tmp)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finalize() if exc_type is None else self.abort()


class IndexedDatasetReader:
    """Memory-maps `prefix.idx` and `prefix.bin`; `reader[i]` is document i's token ids (a read-only view).

    Attributes:
        dtype: Token dtype from the index.
        sequence_lengths: (S,) int32. sequence_pointers: (S,) int64 byte offsets.
        document_indices: (N + 1,) int64, sequence ranges of the N documents.
    """

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        idx = np.memmap(self.prefix + ".idx", dtype=np.uint8, mode="r")
        if idx.size < _FIXED.size:
            raise ValueError(f"{self.prefix}.idx is too short ({idx.size} bytes) to be an MMIDIDX index")
        header, version, code, n_seq, n_doc_idx = _FIXED.unpack(idx[:_FIXED.size].tobytes())
        if header != INDEX_HEADER or version != INDEX_VERSION:
            raise ValueError(f"{self.prefix}.idx is not an MMIDIDX version 1 index (header {header!r}, v{version})")
        if code not in CODE_DTYPES:
            raise ValueError(f"{self.prefix}.idx has unknown dtype code {code}")
        self.dtype = CODE_DTYPES[code]
        offset = _FIXED.size
        self.sequence_lengths = np.frombuffer(idx, np.int32, n_seq, offset)
        offset += 4 * n_seq
        self.sequence_pointers = np.frombuffer(idx, np.int64, n_seq, offset)
        offset += 8 * n_seq
        self.document_indices = np.frombuffer(idx, np.int64, n_doc_idx, offset)
        self._idx = idx
        bin_path = self.prefix + ".bin"
        # np.memmap refuses empty files; a dataset of empty documents has an empty .bin.
        self._bin = (np.memmap(bin_path, dtype=self.dtype, mode="r") if os.path.getsize(bin_path)
                     else np.empty(0, self.dtype))

    def __len__(self) -> int:
        return max(len(self.document_indices) - 1, 0)

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range for {n} documents")
        i %= n
        first, end = int(self.document_indices[i]), int(self.document_indices[i + 1])
        if first == end:
            return self._bin[:0]
        # The sequences of one document are contiguous in .bin.
        start = int(self.sequence_pointers[first]) // self.dtype.itemsize
        stop = int(self.sequence_pointers[end - 1]) // self.dtype.itemsize + int(self.sequence_lengths[end - 1])
        return np.asarray(self._bin[start:stop])

    def __iter__(self):
        return (self[i] for i in range(len(self)))
