"""Deduplication as a pipeline step over shards, in three resumable phases.

1. per shard (parallel): a key per document (exact: a normalized-text hash; minhash: the LSH band keys), saved as
   .npy with a marker;
2. once (driver): documents get global indices (shard offsets), duplicate groups are found (exact: first of each hash
   wins; minhash: candidate pairs from equal band keys -> connected components by label propagation -> the smallest
   index of each cluster wins), and the drop list is saved;
3. per shard (parallel): kept documents are written to `dedup/`, dropped ones to `removed/` with their reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .dedup import (
    MinHashConfig,
    band_keys,
    candidate_pairs,
    components_by_label_propagation,
    duplicates_to_drop,
    exact_duplicates,
    signatures,
    text_hash,
)
from .io import ShardWriter, read_file, write_json

METHODS = ("exact", "minhash")


def _config(spec: dict) -> tuple[str, MinHashConfig | None]:
    spec = dict(spec)
    method = spec.pop("method", "minhash")
    if method not in METHODS:
        raise ValueError(f"dedup: method must be one of {METHODS}, got {method!r}")
    if method == "exact":
        if spec:
            raise ValueError(f"dedup: exact takes no options, got {sorted(spec)}")
        return method, None
    preset = spec.pop("preset", "internlm2")
    try:
        return method, MinHashConfig.from_preset(preset, **spec)
    except (TypeError, ValueError) as e:
        raise ValueError(f"dedup: {e}") from None


def keys_job(job: dict) -> dict:
    """Phase 1 for one shard: save the documents' dedup keys; returns the document count."""
    out = Path(job["keys"])
    marker = out.with_suffix(".done")
    if marker.exists():
        return json.loads(marker.read_text())
    texts = [d.text for d in read_file(job["path"])]
    method, cfg = _config(job["spec"])
    if method == "exact":
        keys = np.array([text_hash(t) for t in texts], dtype=np.uint64).reshape(-1, 1)
    else:
        keys = band_keys(signatures(texts, cfg), cfg.bands, cfg.rows) if texts else np.zeros((0, cfg.bands),
                                                                                                np.uint64)
    tmp = out.with_name(f".{out.name}.tmp.npy")
    np.save(tmp, keys)
    tmp.replace(out)
    result = {"docs": len(texts)}
    write_json(marker, result)
    return result


def filter_job(job: dict) -> dict:
    """Phase 3 for one shard: keep the documents whose global index is not in the drop list."""
    dst = Path(job["dst"])
    marker = dst.with_name(dst.name.replace(".jsonl.gz", ".done"))
    if marker.exists():
        return json.loads(marker.read_text())
    drop = set(np.load(job["drop"]).tolist())
    reason = "exact_duplicate" if job["method"] == "exact" else "near_duplicate"
    with ShardWriter(dst) as kept, ShardWriter(job["removed"]) as removed:
        for i, doc in enumerate(read_file(job["path"])):
            if job["offset"] + i in drop:
                doc.metadata["removed"] = {"step": "dedup", "stage": job["method"], "reason": reason}
                removed.write(doc)
            else:
                kept.write(doc)
    result = {"kept": kept.count, "removed": removed.count}
    write_json(marker, result)
    return result


def run_dedup(spec: dict, shards: list[Path], out: Path, executor) -> tuple[dict, list[Path]]:
    method, cfg = _config(spec)
    work = out / "dedup"
    work.mkdir(parents=True, exist_ok=True)
    jobs = [{"path": str(p), "keys": str(work / (p.name.replace(".jsonl.gz", "") + ".keys.npy")), "spec": spec}
            for p in shards]
    counts = [r["docs"] for r in executor.map(keys_job, jobs, desc=f"dedup keys ({method})")]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    drop_path = work / "drop.npy"
    if not drop_path.exists():
        keys = [np.load(j["keys"]) for j in jobs]
        ids = np.arange(offsets[-1], dtype=np.int64)
        allkeys = np.concatenate(keys) if keys else np.zeros((0, 1), np.uint64)
        if method == "exact":
            drop = np.array(sorted(exact_duplicates(allkeys[:, 0].tolist(), ids.tolist())), dtype=np.int64)
        else:
            nodes, labels = components_by_label_propagation(candidate_pairs(ids, allkeys))
            drop = duplicates_to_drop(nodes, labels)
        tmp = work / ".drop.tmp.npy"
        np.save(tmp, drop)
        tmp.replace(drop_path)
    drop = np.load(drop_path)
    fjobs = [{"path": j["path"], "offset": int(offsets[i]), "drop": str(drop_path), "method": method,
              "dst": str(work / Path(j["path"]).name),
              "removed": str(out / "removed" / Path(j["path"]).name.replace(".jsonl.gz", ".dedup.jsonl.gz"))}
             for i, j in enumerate(jobs)]
    results = executor.map(filter_job, fjobs, desc="dedup filter")
    report = {"method": method, "docs_in": int(offsets[-1]), "docs_out": sum(r["kept"] for r in results),
              "dropped": int(len(drop))}
    if cfg is not None:
        report.update(preset=spec.get("preset", "internlm2"), num_perm=cfg.num_perm, bands=cfg.bands, rows=cfg.rows,
                      ngram_size=cfg.ngram_size)
    return report, [Path(j["dst"]) for j in fjobs]
