"""Exact deduplication: a 64-bit hash of each document's normalized text, then keep the first of each equal hash.

Distributed use: compute `text_hash` per shard anywhere (blake2b, so identical in every process), then partition
(hash, order, id) rows by `hash % k` and run `exact_duplicates` per partition with rows in the global order.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Hashable, Sequence

import numpy as np

_PUNCTUATION = re.compile(r"[^\w\s]")  # anything that is neither a word character nor whitespace


def normalize_text(text: str, strip_punctuation: bool = False) -> str:
    """Lowercase, optionally delete punctuation and symbols, and collapse whitespace runs to single spaces."""
    text = text.lower()
    if strip_punctuation:
        text = _PUNCTUATION.sub("", text)
    return " ".join(text.split())


def text_hash(text: str, strip_punctuation: bool = False) -> int:
    """Unsigned 64-bit hash of the normalized text (blake2b, 8-byte digest): stable across processes and machines."""
    digest = hashlib.blake2b(normalize_text(text, strip_punctuation).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def exact_duplicates(hashes: Sequence[int] | np.ndarray, ids: Sequence[Hashable]) -> set:
    """Ids to drop so that one document per hash remains: the first in the given order.

    Args:
        hashes: one unsigned 64-bit hash per document, in the order that decides which copy is kept.
        ids: the documents' ids, aligned with `hashes`.

    Returns:
        The ids of every later occurrence of a hash.
    """
    if len(hashes) != len(ids):
        raise ValueError(f"got {len(hashes)} hashes but {len(ids)} ids")
    h = np.asarray(hashes, dtype=np.uint64)
    keep = np.zeros(len(h), dtype=bool)
    keep[np.unique(h, return_index=True)[1]] = True  # np.unique returns the index of each value's first occurrence
    return {ids[i] for i in np.flatnonzero(~keep).tolist()}
