"""Deduplication: exact (normalized-text hashes) and near-duplicate (MinHash + LSH + verification + components).

Everything here is a pure function over lists and numpy arrays, so a runner can split the work across processes or
Ray tasks: signatures, band keys (and shingle sets, to verify candidates) per shard; verified candidate pairs per
(band, key) partition; components by label propagation (one groupby per round); drop lists joined back onto the
shards. `near_duplicates` runs the whole near-duplicate path in one process.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .components import components_by_label_propagation, duplicates_to_drop, union_find_components
from .exact import exact_duplicates, normalize_text, text_hash
from .minhash import (
    MINHASH_PRESETS,
    MinHashConfig,
    band_keys,
    band_pairs,
    candidate_pairs,
    estimate_jaccard,
    lsh_threshold,
    optimal_bands_rows,
    s_curve,
    shingle_hashes,
    signatures,
)
from .verify import exact_jaccard, pair_similarity, shingle_sets, signatures_and_sets, verified_s_curve

__all__ = [
    "MINHASH_PRESETS", "MinHashConfig", "band_keys", "band_pairs", "candidate_pairs", "components_by_label_propagation",
    "duplicates_to_drop", "estimate_jaccard", "exact_duplicates", "exact_jaccard", "lsh_threshold", "near_duplicates",
    "normalize_text", "optimal_bands_rows", "pair_similarity", "s_curve", "shingle_hashes", "shingle_sets",
    "signatures", "signatures_and_sets", "text_hash", "union_find_components", "verified_s_curve",
]


def near_duplicates(texts: Sequence[str], ids: Sequence[int] | np.ndarray, config: MinHashConfig,
                    priority: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Ids to drop so that one document per near-duplicate cluster remains (single process).

    signatures -> band keys -> candidate pairs, verified as `config.verify` says -> connected components -> keep
    the smallest id of each cluster (or the highest `priority`, aligned with `ids`).

    Returns:
        int64 ids to drop, sorted.
    """
    ids = np.asarray(ids, dtype=np.int64)
    sig, sets = signatures_and_sets(texts, config)
    pairs = candidate_pairs(ids, band_keys(sig, config.bands, config.rows),
                            similarity=pair_similarity(config, sig, sets), threshold=config.threshold)
    nodes, labels = components_by_label_propagation(pairs)
    if priority is not None:  # align with nodes (every node is one of ids)
        order = np.argsort(ids)
        priority = np.asarray(priority, dtype=np.float64)[order[np.searchsorted(ids, nodes, sorter=order)]]
    return duplicates_to_drop(nodes, labels, priority)
