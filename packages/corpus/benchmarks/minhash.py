"""MinHash + LSH candidate generation: shusheng.corpus.dedup vs datasketch, on the same generated documents.

Both sides start from raw texts and end with the set of candidate pairs (documents sharing an LSH bucket), with the
same shingles (word 5-grams), number of permutations and bands x rows (a preset's). Ours: `signatures` -> `band_keys` ->
`candidate_pairs(all_pairs=True)`. datasketch: word 5-gram shingles in Python -> `MinHash.bulk` (its fast path, shared
permutations) -> `MinHashLSH(params=(b, r))`, querying each document before inserting it. Each runs in one process;
ours again over 1 and N worker processes (each holding the texts, as a runner's worker reads its own shard; chunks of
documents -> band keys, pairs in the parent) to show scaling.
The pair sets differ where the two (independent) hash families disagree near the threshold; their Jaccard is reported
next to ours vs ours with another seed and the value expected from the S-curve and the exact Jaccard of every pair.
Verification (a preset with `verify`, such as internlm2) is timed separately: the same path with each candidate
checked against the threshold before it becomes an edge, as `near_duplicates` and the dedup step run it.

    python packages/corpus/benchmarks/minhash.py [--docs 20000] [--words 300] [--processes 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import re
import time

import numpy as np

from shusheng.corpus.dedup import (
    MinHashConfig,
    band_keys,
    band_pairs,
    candidate_pairs,
    pair_similarity,
    s_curve,
    shingle_hashes,
    signatures,
    signatures_and_sets,
)


def make_corpus(num_docs: int, mean_words: int, dup_fraction: float, seed: int) -> list[str]:
    """Zipf-distributed made-up words; `dup_fraction` of the documents are copies of earlier ones with 0-25% of their
    words replaced in one contiguous span (so their Jaccard similarities straddle the threshold)."""
    rng = np.random.default_rng(seed)
    syllables = np.array(["ka", "ri", "mo", "ten", "sa", "lu", "pe", "do", "vi", "nar", "ko", "shi", "ba", "el", "to"])
    vocab = np.unique(["".join(rng.choice(syllables, rng.integers(2, 5))) for _ in range(20000)])
    p = 1.0 / np.arange(1, len(vocab) + 1)
    lengths = rng.integers(mean_words * 2 // 3, mean_words * 4 // 3 + 1, num_docs)
    words = vocab[rng.choice(len(vocab), lengths.sum(), p=p / p.sum())]
    docs = list(np.split(words, np.cumsum(lengths)[:-1]))
    for i in np.flatnonzero(rng.random(num_docs) < dup_fraction)[1:]:
        src = docs[int(rng.integers(0, i))].copy()
        span = int(rng.uniform(0.0, 0.25) * len(src))
        start = int(rng.integers(0, len(src) - span + 1))
        src[start:start + span] = vocab[rng.integers(0, len(vocab), span)]
        docs[i] = src
    return [" ".join(d) for d in docs]


def ours(texts: list[str], config: MinHashConfig) -> np.ndarray:
    keys = band_keys(signatures(texts, config), config.bands, config.rows)
    return candidate_pairs(np.arange(len(texts)), keys, all_pairs=True)


def ours_verified(texts: list[str], config: MinHashConfig) -> np.ndarray:
    """The edges dedup makes: candidates (leader-linked buckets) kept only if they pass `config.verify`."""
    sig, sets = signatures_and_sets(texts, config)
    keys = band_keys(sig, config.bands, config.rows)
    return candidate_pairs(np.arange(len(texts)), keys, similarity=pair_similarity(config, sig, sets),
                           threshold=config.threshold)


_WORKER_TEXTS: list[str] = []  # set once per worker process by the pool initializer


def _load_texts(texts: list[str]) -> None:
    _WORKER_TEXTS[:] = texts


def _chunk_keys(args: tuple[int, int, MinHashConfig]) -> np.ndarray:
    lo, hi, config = args
    return band_keys(signatures(_WORKER_TEXTS[lo:hi], config), config.bands, config.rows)


def _band_pairs(keys: np.ndarray) -> np.ndarray:
    return band_pairs(np.arange(len(keys)), keys, all_pairs=True)


def ours_parallel(pool, n: int, config: MinHashConfig, chunks: int) -> np.ndarray:
    """Each worker already holds the texts (as a runner's worker reads its own shard): chunks -> band keys; then
    one job per band -> its pairs (as the dedup step's band jobs); the union of the bands' pairs in the parent."""
    bounds = np.linspace(0, n, chunks + 1).astype(int).tolist()
    keys = np.concatenate(pool.map(_chunk_keys, [(a, b, config) for a, b in zip(bounds[:-1], bounds[1:],
                                                                                strict=True)]))
    pairs = np.concatenate(pool.map(_band_pairs, [np.ascontiguousarray(keys[:, j]) for j in range(config.bands)]))
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _spin(_: int) -> int:
    total = 0
    for i in range(3_000_000):
        total += i
    return total


def machine_scaling(k: int) -> float:
    """Throughput ratio of k processes to 1 on a trivially parallel pure-Python loop: this machine's ceiling."""
    rates = []
    for procs in (1, k):
        with mp.get_context("spawn").Pool(procs) as pool:
            pool.map(_spin, range(procs))
            _, t = timed(pool.map, _spin, range(2 * procs))
        rates.append(2 * procs / t)
    return rates[1] / rates[0]


def datasketch_pairs(texts: list[str], config: MinHashConfig) -> set[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    n = config.ngram_size
    word = re.compile(r"[^\W_]+")

    def shingles(text: str) -> list[bytes]:
        w = word.findall(text.lower())
        return list({" ".join(w[i:i + n]).encode() for i in range(max(len(w) - n + 1, 1))})

    minhashes = MinHash.bulk((shingles(t) for t in texts), num_perm=config.num_perm, seed=config.seed)
    lsh = MinHashLSH(num_perm=config.num_perm, params=(config.bands, config.rows))
    pairs = set()
    for i, m in enumerate(minhashes):
        pairs.update((j, i) for j in lsh.query(m))
        lsh.insert(i, m)
    return pairs


def exact_jaccard(texts: list[str], config: MinHashConfig) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (E, 2), J (E,)): the exact Jaccard similarity of every pair of documents sharing a shingle."""
    h, o = shingle_hashes(texts, config.ngram_unit, config.ngram_size)
    doc = np.repeat(np.arange(len(texts)), np.diff(o))
    entries = np.unique(np.stack([doc.astype(np.uint64), h], axis=1), axis=0)  # distinct (doc, shingle)
    sizes = np.bincount(entries[:, 0].astype(np.int64), minlength=len(texts))
    pairs, shared = np.unique(band_pairs(entries[:, 0].astype(np.int64), entries[:, 1], all_pairs=True), axis=0,
                              return_counts=True)
    return pairs, shared / (sizes[pairs[:, 0]] + sizes[pairs[:, 1]] - shared)


def expected_agreement(jaccard: np.ndarray, config: MinHashConfig) -> float:
    """E|A & B| / E|A | B| for the pair sets A, B of two independent LSH draws: sum S^2 / sum (2S - S^2)."""
    s = s_curve(jaccard, config.bands, config.rows)
    return float(np.sum(s * s) / np.sum(2 * s - s * s))


def pair_jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


def timed(fn, *args, repeats: int = 1):
    """The result and the best wall time of `repeats` runs."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--words", type=int, default=300, help="mean words per document")
    ap.add_argument("--dup-fraction", type=float, default=0.2)
    ap.add_argument("--preset", default="internlm2")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="time each side this many times, keep the best")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    config = MinHashConfig.from_preset(args.preset)
    texts = make_corpus(args.docs, args.words, args.dup_fraction, args.seed)
    ours(texts[:200], config)  # warm up (the Unicode table, imports)

    ours_pairs, t_ours = timed(ours, texts, config, repeats=args.repeats)
    ds_pairs, t_ds = timed(datasketch_pairs, texts, config, repeats=args.repeats)
    if config.verify != "none":
        edges, t_verified = timed(ours_verified, texts, config, repeats=args.repeats)
    ours_set = set(map(tuple, ours_pairs.tolist()))
    reseeded = set(map(tuple, ours(texts, MinHashConfig.from_preset(args.preset, seed=config.seed + 1)).tolist()))
    agreement, self_agreement = pair_jaccard(ours_set, ds_pairs), pair_jaccard(ours_set, reseeded)
    expected = expected_agreement(exact_jaccard(texts, config)[1], config)

    scaling = {}
    for k in sorted({1, args.processes}):
        with mp.get_context("spawn").Pool(k, initializer=_load_texts, initargs=(texts,)) as pool:
            pool.map(_chunk_keys, [(0, 50, config)] * k)  # start the workers before timing
            pairs, t = timed(ours_parallel, pool, len(texts), config, 2 * k, repeats=args.repeats)
        assert set(map(tuple, pairs.tolist())) == ours_set
        scaling[k] = args.docs / t

    ceiling = machine_scaling(args.processes) if args.processes > 1 else 1.0
    n = args.docs
    rows = [
        ("shusheng (1 core, in process)", n / t_ours, len(ours_set)),
        ("datasketch (1 core)", n / t_ds, len(ds_pairs)),
    ] + [(f"shusheng, {k} worker process{'es' if k > 1 else ''}", v, len(ours_set)) for k, v in scaling.items()]
    print(f"{n} docs x ~{args.words} words, preset {args.preset}: {config.ngram_size}-gram {config.ngram_unit}s, "
          f"{config.num_perm} permutations, {config.bands} bands x {config.rows} rows ({platform.processor() or ''}"
          f"{mp.cpu_count()} CPUs)")
    print(f"{'':34s} {'docs/s':>10s} {'pairs':>8s}")
    for name, rate, count in rows:
        print(f"{name:34s} {rate:10.0f} {count:8d}")
    speedup = t_ds / t_ours
    k = max(scaling)
    print(f"speedup over datasketch: {speedup:.1f}x; {k} processes vs 1: {scaling[k] / scaling[1]:.2f}x "
          f"(a trivially parallel Python loop gets {ceiling:.2f}x on this machine)")
    print(f"candidate-pair agreement (Jaccard of the pair sets): ours vs datasketch {agreement:.3f}; ours vs ours "
          f"with another seed {self_agreement:.3f}; expected for two independent draws of the S-curve {expected:.3f}")
    if config.verify != "none":
        print(f"with {config.verify} verification at {config.threshold} (1 core, not part of the comparison): "
              f"{n / t_verified:.0f} docs/s, {t_verified / t_ours:.2f}x the candidate path's time, {len(edges)} edges")
    if args.json:
        result = {
            "docs": n, "words": args.words, "preset": args.preset, "bands": config.bands, "rows": config.rows,
            "num_perm": config.num_perm, "ours_docs_per_s": n / t_ours, "datasketch_docs_per_s": n / t_ds,
            "speedup": speedup, "processes_docs_per_s": {str(k): v for k, v in scaling.items()},
            "ours_pairs": len(ours_set), "datasketch_pairs": len(ds_pairs), "pair_jaccard": agreement,
            "pair_jaccard_reseeded": self_agreement, "pair_jaccard_expected": expected,
            "cpus": mp.cpu_count(), "machine_scaling": ceiling, "verify": config.verify,
        }
        if config.verify != "none":
            result.update(verified_docs_per_s=n / t_verified, verified_edges=len(edges))
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
