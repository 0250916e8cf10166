"""Verification of LSH candidates: is a candidate pair's Jaccard similarity really >= the threshold?

LSH with 128 permutations is a blunt decision (see `minhash.py`), so production pipelines use it only to find
candidates, with an S-curve placed below the threshold, and check each candidate before it becomes an edge of the
duplicate graph (NeMo Curator's `false_positive_check`). Two checks, chosen by `MinHashConfig.verify`:

- "exact": the Jaccard similarity of the two documents' shingle sets, from `shingle_sets` (each document's distinct
  32-bit shingle hashes, sorted, in CSR layout: the same values the MinHash permutations see), by one linear merge
  per batch of pairs. Two 1,000-shingle documents share a 32-bit collision with probability ~5e-4, which moves their
  Jaccard by ~1e-3.
- "estimate": the fraction of equal signature values, from the signatures alone; binomial noise, std ~0.04 at 0.7.

`pair_similarity` turns either into the `similarity(a, b)` that `band_pairs` takes; `leader_pairs` is how
`band_pairs` links a bucket with it (linear for a bucket of near-copies, where a star would be unverifiable and all
pairs quadratic); `verified_s_curve` gives the probability that a pair of a given Jaccard similarity becomes an edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from .minhash import (
    MinHashConfig,
    estimate_jaccard,
    s_curve,
    shingle_hashes,
    signatures,
    signatures_from_shingles,
)

MAX_LEADERS = 16  # leader rounds per bucket: bounds a bucket of m mutually dissimilar documents to 16 m comparisons
_PAIR_BLOCK = 1 << 22  # shingles per batch of pairs in `exact_jaccard` (two 32 MB uint64 arrays)
_SIG_BLOCK = 1 << 16  # pairs per batch in the signature estimate: (65536, 128) bool = 8 MB


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenated aranges [starts[k], starts[k] + lengths[k]): (sum(lengths),) int64."""
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(int(lengths.sum()), dtype=np.int64)


def leader_pairs(i: np.ndarray, starts: np.ndarray, sizes: np.ndarray, similarity, threshold: float) -> np.ndarray:
    """Verified pairs of the buckets i[starts[g]:starts[g] + sizes[g]] (sorted by id) by leader rounds, all buckets
    at once; `similarity` takes positions into i."""
    member = ranges(starts, sizes)  # (M,) positions into i, bucket by bucket
    first = np.cumsum(sizes) - sizes  # (G,) each bucket's first index into member
    bucket = np.repeat(np.arange(len(sizes)), sizes)  # (M,)
    unlinked, led = np.ones(len(member), dtype=bool), np.zeros(len(member), dtype=bool)
    out = []
    for _ in range(MAX_LEADERS):
        candidates = np.flatnonzero(unlinked & ~led)
        if len(candidates) == 0:
            break
        g, at = np.unique(bucket[candidates], return_index=True)  # buckets with a possible leader, and its index
        leader = candidates[at]  # (L,) the smallest such id of each
        led[leader] = True
        other = ranges(first[g], sizes[g])  # (C,) every member of those buckets...
        lead = np.repeat(leader, sizes[g])
        keep = ~led[other]  # ...that has not led (leaders have been compared with each other already)
        other, lead = other[keep], lead[keep]
        ok = similarity(member[lead], member[other]) >= threshold
        unlinked[other[ok]] = False
        a, b = i[member[lead[ok]]], i[member[other[ok]]]
        out.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    return np.concatenate(out) if out else np.empty((0, 2), dtype=np.int64)


def shingle_sets(texts: Sequence[str], config: MinHashConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each text's distinct 32-bit shingle hashes, sorted: (values (M,) uint32, offsets (len(texts) + 1,) int64).

    `signatures_from_shingles(values, offsets, ...)` gives the same signatures as `signatures(texts, config)`.
    """
    h, o = shingle_hashes(texts, config.ngram_unit, config.ngram_size)
    doc = np.repeat(np.arange(len(texts), dtype=np.uint64), np.diff(o))
    # (doc, value), sorted: "stable" is timsort, which merges the runs of the doc-major order (3x quicksort here)
    key = np.sort((doc << np.uint64(32)) | (h >> np.uint64(32)), kind="stable")
    key = key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key
    counts = np.bincount((key >> np.uint64(32)).astype(np.int64), minlength=len(texts))
    return key.astype(np.uint32), np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def exact_jaccard(values: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard similarity of the shingle sets of documents a[k] and b[k]: (E,) float64 (1.0 for two empty sets).

    Args:
        values, offsets: sorted distinct shingle hashes per document, from `shingle_sets`.
        a, b: (E,) document indices into offsets.
    """
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    la, lb = offsets[a + 1] - offsets[a], offsets[b + 1] - offsets[b]  # (E,) set sizes
    out = np.empty(len(a))
    bounds = np.cumsum(la + lb)
    lo = 0
    while lo < len(a):  # batches of whole pairs, about _PAIR_BLOCK shingles each (at least one pair)
        hi = max(lo + 1, int(np.searchsorted(bounds, (bounds[lo - 1] if lo else 0) + _PAIR_BLOCK, "right")))
        sa, sb = la[lo:hi], lb[lo:hi]
        pair = np.arange(hi - lo, dtype=np.uint64)
        # (pair, value) of both sets, sorted: a value in both sets appears twice in a row. Each side is already
        # sorted, so the stable sort (timsort) is a linear merge of two runs.
        key = np.concatenate([(np.repeat(pair, sa) << np.uint64(32)) | values[ranges(offsets[a[lo:hi]], sa)],
                              (np.repeat(pair, sb) << np.uint64(32)) | values[ranges(offsets[b[lo:hi]], sb)]])
        key.sort(kind="stable")
        both = key[1:][key[1:] == key[:-1]]
        inter = np.bincount((both >> np.uint64(32)).astype(np.int64), minlength=hi - lo)
        union = sa + sb - inter
        out[lo:hi] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        lo = hi
    return out


def signature_jaccard(sig: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`estimate_jaccard` of rows a[k] and b[k] of sig (N, P), in batches: (E,) float64."""
    return np.concatenate([estimate_jaccard(sig[a[lo:lo + _SIG_BLOCK]], sig[b[lo:lo + _SIG_BLOCK]])
                           for lo in range(0, len(a), _SIG_BLOCK)] or [np.empty(0)])


def pair_similarity(config: MinHashConfig, sig: np.ndarray | None = None,
                    sets: tuple[np.ndarray, np.ndarray] | None = None) -> Callable | None:
    """The `similarity(a, b)` for `band_pairs` that `config.verify` asks for (None for "none").

    Args:
        config: its `verify` picks the check.
        sig: (N, P) signatures, for "estimate"; sets: `shingle_sets` of the same N documents, for "exact".
    """
    if config.verify == "exact":
        return lambda a, b: exact_jaccard(*sets, a, b)
    if config.verify == "estimate":
        return lambda a, b: signature_jaccard(sig, a, b)
    return None


def verified_s_curve(similarity, config: MinHashConfig):
    """Probability that two documents with this Jaccard similarity become an edge under `config`.

    The candidate S-curve times the check: a step at the threshold ("exact"), or P(at least threshold * num_perm of
    num_perm signature values agree) = a binomial tail ("estimate"). Leader linking and the conditioning of the
    estimate on one band's `rows` equal values are ignored (both small).
    """
    s = np.asarray(similarity, dtype=np.float64)
    candidate = s_curve(s, config.bands, config.rows)
    if config.verify == "none":
        return candidate
    if config.verify == "exact":
        return candidate * (s >= config.threshold)
    p = config.num_perm
    k = np.arange(math.ceil(config.threshold * p - 1e-9), p + 1)  # matching values that pass
    log_comb = np.array([math.lgamma(p + 1) - math.lgamma(j + 1) - math.lgamma(p - j + 1) for j in k])
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) = -inf; a zero exponent contributes 0 (0^0 = 1)
        log_s, log_1s = np.log(s[..., None]), np.log1p(-s[..., None])
        log_terms = log_comb + np.where(k > 0, k * log_s, 0.0) + np.where(k < p, (p - k) * log_1s, 0.0)
    return candidate * np.exp(log_terms).sum(axis=-1).clip(0.0, 1.0)


def signatures_and_sets(texts: Sequence[str], config: MinHashConfig) -> tuple[np.ndarray, tuple | None]:
    """(signatures (N, num_perm) uint32, `shingle_sets` or None): the sets only when `config.verify` is "exact",
    then shingling once for both."""
    if config.verify != "exact":
        return signatures(texts, config), None
    sets = shingle_sets(texts, config)
    return signatures_from_shingles(sets[0], sets[1], config.num_perm, config.seed), sets
