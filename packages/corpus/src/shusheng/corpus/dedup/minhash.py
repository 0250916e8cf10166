"""MinHash signatures and LSH banding, vectorized in numpy: texts -> shingle hashes -> signatures -> band keys -> pairs.

Every function is pure over lists and arrays (no global mutable state, no Python `hash()`), so a runner can compute
signatures per shard in any process or Ray task and get bit-identical results everywhere.

Pipeline (Broder 1997; Leskovec et al., *Mining of Massive Datasets*, ch. 3; the same shape as datatrove's and
text-dedup's MinHash dedup):

1. `shingle_hashes`: lowercase, split into words on anything that is not a letter, mark or digit (so punctuation and
   whitespace never matter), take word or character n-grams and hash each to 64 bits. All of it runs on the UTF-32
   code points of a whole batch at once: a polynomial hash per word (from prefix sums), a weighted sum over each
   n-gram window, then the MurmurHash3 64-bit finalizer for avalanche.
2. `signatures`: for each of `num_perm` hash functions, the minimum over a document's shingles. The functions are
   Dietzfelbinger's multiply-add-shift `h(x) = ((a*x + b) mod 2**64) >> 32` on 32-bit shingle hashes `x` with random
   64-bit `a, b`: a strongly universal (2-independent) family, the same guarantee as the textbook
   `(a*x + b) mod (2**61 - 1)`, but exact in uint64 because the wraparound *is* the modulus. (The Mersenne form needs
   a 122-bit product; datasketch's legacy scheme and datatrove compute it with an overflowing uint64 product instead,
   and datasketch >= 2.0 defaults to `a*x + b mod 2**32`, a bijection but only 2-universal.)
   Taking the min before the `>> 32` is exact, since the shift is monotone.
3. `band_keys`: split each signature into `bands` bands of `rows` values and hash each band to one uint64.
4. `candidate_pairs`: documents that share a key in any band, found by sorting the keys of each band; with a
   `similarity` (see `verify.py`), only pairs whose similarity reaches the threshold are kept.

Two documents with Jaccard similarity s share at least one band with probability `s_curve(s) = 1 - (1 - s**r)**b`,
an S-curve whose steepest point is near `lsh_threshold = (1/b)**(1/r)`. `optimal_bands_rows` picks (b, r) for a
target threshold by minimizing the weighted areas of false positives below it and false negatives above it, like
datasketch's `_optimal_param`. With 128 permutations no S-curve is sharp (14 x 9, the best one for 0.7, takes 10% of
the pairs at J = 0.58 and 90% only at J = 0.81), which is why a config can `verify` candidates instead.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_EMPTY = np.uint32(0xFFFFFFFF)  # signature value of a document without shingles
_TEXT_BATCH_CHARS = 1 << 18  # code points per vectorized text pass: its uint64 arrays (2 MB each) stay in cache
_PERM_BLOCK = 8192  # shingles per (num_perm, shingles) block: 8 MB at num_perm=128, fits in L2/L3

# Presets: one line each. internlm2: InternLM2 report (5-gram words, 128 permutations, threshold 0.7), LSH as a
# candidate generator tuned for recall, each candidate verified by exact Jaccard. 25 x 5 is optimal_bands_rows(0.5,
# 128): 10% / 50% / 90% of pairs become candidates at J = 0.34 / 0.49 / 0.62 and 99% at 0.70, where 14 x 9 (that of
# 0.7) misses 56% of the pairs at J = 0.7. fineweb: FineWeb's published 14 x 8; its S-curve is the decision.
MINHASH_PRESETS: dict[str, dict] = {
    "internlm2": dict(ngram_unit="word", ngram_size=5, num_perm=128, bands=25, rows=5, threshold=0.7, verify="exact"),
    "fineweb": dict(ngram_unit="word", ngram_size=5, num_perm=112, bands=14, rows=8),
}
VERIFY = ("none", "exact", "estimate")


@dataclass
class MinHashConfig:
    """MinHash + LSH settings. Give `bands` and `rows`, or a threshold to derive them with `optimal_bands_rows`.

    Two documents are near-duplicates when the Jaccard similarity J of their shingle sets is at least `threshold`.
    LSH makes a pair a candidate with probability `s_curve(J, bands, rows)`, which 128 permutations cannot make sharp.
    `verify` decides what a candidate pair needs to become an edge of the duplicate graph:

    - "none": nothing; the S-curve is the decision (FineWeb's setup). Pairs below the threshold are merged and
      pairs above it missed in proportion to the curve's width.
    - "exact": the exact Jaccard of the two shingle sets (their 32-bit hashes) must be >= threshold, as production
      tools check candidates (NeMo Curator's `false_positive_check`). No edge has J < threshold, so the S-curve can
      sit below the threshold and be tuned for recall alone; its cost is one set intersection per verified pair,
      and the step keeps each shard's shingle sets (4 bytes a shingle) next to its band keys.
    - "estimate": the fraction of equal signature values must be >= threshold. No extra data, but with 128
      permutations its standard deviation is ~0.04 at J = 0.7, so pairs within ~0.05 of the threshold go either way
      (`verified_s_curve` gives the effective curve).

    `threshold`, when not given, is the S-curve's midpoint `lsh_threshold(bands, rows)` (verification needs one).
    Derived bands x rows are `optimal_bands_rows(candidate_threshold, num_perm)`; `candidate_threshold` defaults
    to `threshold`, and with verification it should be lower (the internlm2 preset's 25 x 5 is that of 0.5).
    """

    ngram_unit: str = "word"  # "word" or "char"
    ngram_size: int = 5
    num_perm: int = 128
    bands: int = 0  # 0: derived from candidate_threshold
    rows: int = 0
    threshold: float | None = None
    seed: int = 1
    verify: str = "none"  # "none", "exact" or "estimate": what a candidate pair needs to become an edge
    candidate_threshold: float | None = None  # what derived bands x rows aim at; default: threshold

    def __post_init__(self):
        if self.ngram_unit not in ("word", "char"):
            raise ValueError(f"ngram_unit must be 'word' or 'char', got {self.ngram_unit!r}")
        if self.ngram_size < 1 or self.num_perm < 1:
            raise ValueError(f"ngram_size and num_perm must be >= 1, got {self.ngram_size} and {self.num_perm}")
        for name in ("threshold", "candidate_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if self.verify not in VERIFY:
            raise ValueError(f"verify must be one of {VERIFY}, got {self.verify!r}")
        if self.verify != "none" and self.threshold is None:
            raise ValueError(f"verify={self.verify!r} needs a threshold to verify against")
        if self.bands == 0 and self.rows == 0:
            target = self.threshold if self.candidate_threshold is None else self.candidate_threshold
            if target is None:
                raise ValueError("give bands and rows, or a threshold to derive them from")
            self.bands, self.rows = optimal_bands_rows(target, self.num_perm)
        if self.bands < 1 or self.rows < 1:
            raise ValueError(f"bands and rows must both be >= 1, got {self.bands} x {self.rows}")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands} * {self.rows} = {self.bands * self.rows} "
                             f"exceeds num_perm = {self.num_perm}")
        if self.threshold is None:
            self.threshold = lsh_threshold(self.bands, self.rows)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> MinHashConfig:
        """A preset by name (see `MINHASH_PRESETS`), with fields overridden by keyword."""
        if name not in MINHASH_PRESETS:
            raise ValueError(f"unknown MinHash preset {name!r}; presets: {', '.join(sorted(MINHASH_PRESETS))}")
        return cls(**{**MINHASH_PRESETS[name], **overrides})


# ---------------------------------------------------------------------------------------------------------------------
# S-curve


def s_curve(similarity, bands: int, rows: int):
    """Probability that two documents with this Jaccard similarity share at least one LSH band: 1 - (1 - s^r)^b."""
    s = np.asarray(similarity, dtype=np.float64)
    return 1.0 - (1.0 - s**rows) ** bands


def lsh_threshold(bands: int, rows: int) -> float:
    """The similarity near which the S-curve is steepest: (1/b)^(1/r)."""
    return (1.0 / bands) ** (1.0 / rows)


def optimal_bands_rows(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5,
                       ) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimizing fp_weight * FP + fn_weight * FN.

    FP is the area under the S-curve below the threshold (non-duplicates that become candidates) and FN the area
    above the S-curve above it (duplicates that never become candidates). Integrated with Simpson's rule.
    """
    br = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)])  # (K, 2)
    b, r = br[:, :1].astype(np.float64), br[:, 1:].astype(np.float64)

    def simpson(lo: float, hi: float, f) -> np.ndarray:
        s = np.linspace(lo, hi, 1025)  # (S,)
        w = np.ones_like(s)
        w[1:-1:2], w[2:-1:2] = 4.0, 2.0
        return f(s[None, :]) @ w * (hi - lo) / (3 * (len(s) - 1))  # (K,)

    fp = simpson(0.0, threshold, lambda s: 1.0 - (1.0 - s**r) ** b)
    fn = simpson(threshold, 1.0, lambda s: (1.0 - s**r) ** b)
    best = int(np.argmin(fp_weight * fp + fn_weight * fn))
    return int(br[best, 0]), int(br[best, 1])


# ---------------------------------------------------------------------------------------------------------------------
# Shingles


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: a bijection on uint64 where every input bit affects every output bit."""
    h = h ^ (h >> _U64(33))
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB9FE1A85EC53)
    h ^= h >> _U64(33)
    return h


def _splitmix64(seed: int, n: int) -> list[int]:
    """n pseudo-random 64-bit ints from a seed (SplitMix64): fixed constants, identical in every process and version."""
    out, state = [], seed & _MASK64
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append(z ^ (z >> 31))
    return out


@cache
def _word_char_table() -> np.ndarray:
    """(0x10001,) bool: is this BMP code point part of a word (Unicode letter, mark or digit)? Index 0x10000 stands for
    every code point above the BMP (rare scripts, emoji), which count as word characters."""
    table = np.array([unicodedata.category(chr(c))[0] in "LMN" for c in range(0x10000)] + [True])
    table.flags.writeable = False
    return table


# Multipliers: per-character polynomial base, and one odd weight per position inside an n-gram window.
_CHAR_BASE = _U64(0x100000001B3)
_LEN_SALT = _U64(0x9E3779B97F4A7C15)


@cache
def _window_weights(n: int) -> np.ndarray:
    return np.array([x | 1 for x in _splitmix64(0x5EED, n)], dtype=_U64)


def _powers(base: int, n: int, block: int = 1024) -> np.ndarray:
    """(n,) uint64: base^0, base^1, ... mod 2^64, as an outer product of two short cumulative products."""
    lo = np.ones(block, dtype=_U64)
    lo[1:] = np.cumprod(np.full(block - 1, base, dtype=_U64))
    hi = np.ones(-(-n // block), dtype=_U64)
    hi[1:] = np.cumprod(np.full(len(hi) - 1, pow(base, block, 1 << 64), dtype=_U64))
    return (hi[:, None] * lo[None, :]).ravel()[:n]


def _units(texts: Sequence[str], ngram_unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Hash the units (words, or characters of the words joined by single spaces) of a batch of texts.

    Returns:
        (unit_hashes (U,) uint64, counts (D,) int64): all units in order, and how many belong to each text.
    """
    lowered = [t.lower() for t in texts]
    lengths = np.fromiter((len(t) for t in lowered), dtype=np.int64, count=len(lowered))
    bounds = np.concatenate([[0], np.cumsum(lengths + 1)])  # (D+1,) texts are joined by "\n", a non-word char
    cp = np.frombuffer("\n".join(lowered).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # (L,)
    # Word characters: ASCII digits and lowercase letters by arithmetic, everything else through the Unicode table.
    is_word = ((cp - np.uint32(0x30)) < 10) | ((cp - np.uint32(0x61)) < 26)
    other = np.flatnonzero(cp >= 0x80)
    is_word[other] = _word_char_table()[np.minimum(cp[other], 0x10000)]
    edges = np.flatnonzero(np.diff(is_word.view(np.int8), prepend=np.int8(0), append=np.int8(0)))
    starts, ends = edges[0::2], edges[1::2]  # (W,) each word is cp[starts[k]:ends[k]]
    if len(starts) == 0:
        return np.empty(0, dtype=_U64), np.zeros(len(texts), dtype=np.int64)
    if ngram_unit == "char":
        # Characters of the words, plus one space (U+0020) in place of the gap before each word but a text's first.
        first_word = np.searchsorted(starts, bounds[:-1])
        gap = np.ones(len(starts), dtype=bool)
        gap[first_word[first_word < len(starts)]] = False
        keep, codes = is_word.copy(), cp.copy()
        keep[starts[gap] - 1] = True
        codes[starts[gap] - 1] = 0x20
        kept = np.flatnonzero(keep)
        return _fmix64(codes[kept].astype(_U64)), np.diff(np.searchsorted(kept, bounds))
    # Words: polynomial hash sum_k c_k B^k from prefix sums P (wrapping mod 2^64), shifted to each word's start with
    # the inverse powers of B (odd, so invertible mod 2^64), then mixed with the word length.
    powers = _powers(int(_CHAR_BASE), len(cp))  # B^0, B^1, ...
    inverse = _powers(pow(int(_CHAR_BASE), -1, 1 << 64), len(cp))  # B^0, B^-1, ...
    prefix = np.zeros(len(cp) + 1, dtype=_U64)
    np.cumsum(cp * powers, out=prefix[1:])
    h = (prefix[ends] - prefix[starts]) * inverse[starts]
    length = (ends - starts).astype(_U64)
    return _fmix64(h ^ (length * _LEN_SALT)), np.diff(np.searchsorted(starts, bounds))


def shingle_hashes(texts: Sequence[str], ngram_unit: str = "word", ngram_size: int = 5, short_docs: bool = True,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the n-gram shingles of each text, in CSR layout (repeated shingles are kept).

    Args:
        texts: documents.
        ngram_unit: "word" (n consecutive words) or "char" (n consecutive characters of the words joined by spaces).
        ngram_size: n.
        short_docs: give a text with fewer than n units (but at least one) a single shingle of all its units;
            otherwise it has none.

    Returns:
        (hashes (M,) uint64, offsets (len(texts) + 1,) int64): text i's shingles are hashes[offsets[i]:offsets[i+1]].
    """
    if ngram_unit not in ("word", "char"):
        raise ValueError(f"ngram_unit must be 'word' or 'char', got {ngram_unit!r}")
    parts, counts = [], []
    ends = np.cumsum([len(t) + 1 for t in texts])
    lo = 0
    while lo < len(texts):  # batches of whole texts, about _TEXT_BATCH_CHARS code points each (at least one text)
        hi = max(lo + 1, int(np.searchsorted(ends, ends[lo] + _TEXT_BATCH_CHARS)))
        h, c = _batch_shingles(texts[lo:hi], ngram_unit, ngram_size, short_docs)
        parts.append(h)
        counts.append(c)
        lo = hi
    counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    hashes = np.concatenate(parts) if parts else np.empty(0, _U64)
    return hashes, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _batch_shingles(texts: Sequence[str], ngram_unit: str, n: int, short_docs: bool) -> tuple[np.ndarray, np.ndarray]:
    units, counts = _units(texts, ngram_unit)  # (U,), (D,)
    first = np.cumsum(counts) - counts  # (D,) index of each text's first unit
    w = _window_weights(n)
    # Window sums s[i] = sum_j w_j * units[i + j], wrapping mod 2^64. Windows that run past a text's end are never
    # used below, except the single shingle of a short text, which is recomputed.
    s = np.zeros(len(units), dtype=_U64)
    for j in range(min(n, len(units))):
        s[: len(units) - j] += units[j:] * w[j]
    num_shingles = np.where(counts >= n, counts - n + 1, (counts > 0) & short_docs)  # (D,)
    # Shingle i of text d starts at unit first[d] + i: mark [first + num_shingles, first + counts) as unused.
    delta = np.zeros(len(units) + 1, dtype=np.int32)
    np.add.at(delta, first + num_shingles, 1)  # add.at: empty texts repeat indices
    np.add.at(delta, first + counts, -1)
    s = s[np.cumsum(delta[:-1]) == 0]
    short = np.flatnonzero((counts > 0) & (counts < n) & short_docs)
    if len(short):
        at = (np.cumsum(num_shingles) - num_shingles)[short]
        s[at] = 0
        for j in range(n - 1):
            has = counts[short] > j
            s[at[has]] += units[first[short][has] + j] * w[j]
    return _fmix64(s), num_shingles


# ---------------------------------------------------------------------------------------------------------------------
# Signatures and LSH


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) uint64 coefficients, each (num_perm,), of the hash functions h(x) = ((a*x + b) mod 2^64) >> 32."""
    ab = _splitmix64(seed, 2 * num_perm)
    return np.array(ab[:num_perm], dtype=_U64), np.array(ab[num_perm:], dtype=_U64)


def signatures(texts: Sequence[str], config: MinHashConfig) -> np.ndarray:
    """MinHash signatures: (len(texts), num_perm) uint32. A text without any word character gets all 0xFFFFFFFF."""
    hashes, offsets = shingle_hashes(texts, config.ngram_unit, config.ngram_size)
    return signatures_from_shingles(hashes >> _U64(32), offsets, config.num_perm, config.seed)


def signatures_from_shingles(x: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """Signatures from 32-bit shingle hashes `x` (M,) in CSR layout `offsets` (D + 1,): (D, num_perm) uint32."""
    a, b = permutations(num_perm, seed)
    a, b = a[:, None], b[:, None]  # (P, 1)
    num_docs = len(offsets) - 1
    sig = np.full((num_perm, num_docs), _EMPTY, dtype=np.uint32)  # (P, D); transposed at the end
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    ends = offsets[nonempty + 1]
    lo = 0
    while lo < len(nonempty):
        # Whole documents per block, about _PERM_BLOCK shingles (at least one document).
        hi = max(lo + 1, int(np.searchsorted(ends, offsets[nonempty[lo]] + _PERM_BLOCK, "right")))
        docs = nonempty[lo:hi]
        start, stop = offsets[docs[0]], offsets[docs[-1] + 1]
        block = a * x[None, start:stop]  # (P, m) uint64, wraps mod 2^64
        block += b
        # (P, d): min over each document's shingles; the reduction runs along contiguous memory (axis 1).
        mins = np.minimum.reduceat(block, offsets[docs] - start, axis=1)
        sig[:, docs] = (mins >> _U64(32)).astype(np.uint32)
        lo = hi
    return np.ascontiguousarray(sig.T)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: the fraction of equal signature values (along the last axis)."""
    return np.mean(np.asarray(sig_a) == np.asarray(sig_b), axis=-1)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) uint64: a hash of each band's `rows` signature values (the first bands * rows columns are used)."""
    n, p = signatures.shape
    if bands * rows > p:
        raise ValueError(f"bands * rows = {bands * rows} exceeds the signature length {p}")
    v = signatures[:, : bands * rows].reshape(n, bands, rows).astype(_U64)  # (N, b, r)
    w = _window_weights(rows)  # (r,)
    return _fmix64((v * w).sum(axis=2, dtype=_U64) ^ _U64(rows))  # sum wraps mod 2^64


def band_pairs(ids: np.ndarray, keys: np.ndarray, all_pairs: bool = False,
               similarity: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None, threshold: float = 0.0,
               ) -> np.ndarray:
    """Pairs of ids that share a key, for one band: (E, 2) int64, each row (smaller id, larger id).

    This is the unit of distributed work: rows of all bands can be shuffled by (band, key) and each partition run here.

    Args:
        ids: (N,) int ids.
        keys: (N,) uint64 band keys.
        all_pairs: emit every pair in a bucket (quadratic in its size). By default emit a star, (smallest id, other),
            which has the same connected components and is linear, so a bucket of 10^5 copies stays cheap.
        similarity: optional `f(a, b) -> (E,)` similarity of the documents at positions a[k], b[k] of `ids` (see
            `verify.py`); then only pairs with similarity >= threshold are kept. A star would lose the members
            that are similar to each other but not to the bucket's smallest id, so buckets are linked by leaders:
            the smallest id not yet linked leads, is compared with every member that has not led, and links those
            that pass; repeat until every member is linked or has led (at most `MAX_LEADERS` rounds). A bucket of
            near-copies takes one round; the only edges missed are between two members that each passed a
            different leader, whose clusters the other bands usually join.
        threshold: the similarity a verified pair needs.
    """
    ids, keys = np.asarray(ids, dtype=np.int64), np.asarray(keys)
    order = np.lexsort((ids, keys))  # by key, then id
    k, i = keys[order], ids[order]
    boundary = np.flatnonzero(np.diff(k) != 0) + 1
    group_start = np.concatenate([[0], boundary])
    group_size = np.diff(np.append(group_start, len(k)))
    big = group_size > 1
    if not big.any():
        return np.empty((0, 2), dtype=np.int64)
    if similarity is not None and not all_pairs:
        from .verify import leader_pairs  # verify.py imports this module

        return leader_pairs(i, group_start[big], group_size[big], lambda a, b: similarity(order[a], order[b]),
                            threshold)
    if not all_pairs:
        head = np.repeat(i[group_start[big]], group_size[big] - 1)  # the smallest id of each bucket
        members = np.ones(len(k), dtype=bool)
        members[group_start] = False  # everyone but the head
        members &= np.repeat(big, group_size)
        return np.stack([head, i[members]], axis=1)
    # Every element pairs with each later element of its bucket.
    later = np.repeat(group_start + group_size, group_size) - np.arange(len(k)) - 1  # (N,)
    left = np.repeat(np.arange(len(k)), later)
    right = left + 1 + np.arange(len(left)) - np.repeat(np.cumsum(later) - later, later)
    if similarity is not None:
        keep = similarity(order[left], order[right]) >= threshold
        left, right = left[keep], right[keep]
    return np.stack([i[left], i[right]], axis=1)


def candidate_pairs(ids: np.ndarray, keys: np.ndarray, all_pairs: bool = False, similarity=None,
                    threshold: float = 0.0) -> np.ndarray:
    """Unique pairs of ids sharing a key in any band: (E, 2) int64 sorted rows (smaller id, larger id).

    Args:
        ids: (N,) int ids (for example global document indices).
        keys: (N, bands) uint64 from `band_keys`.
        all_pairs, similarity, threshold: see `band_pairs`.
    """
    keys = np.asarray(keys)
    pairs = [band_pairs(ids, keys[:, j], all_pairs, similarity, threshold) for j in range(keys.shape[1])]
    pairs = np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)
    return np.unique(pairs, axis=0) if len(pairs) else pairs
