"""Deduplication as a pipeline step over shards, in three resumable phases.

1. per shard (parallel): a key per document (exact: a normalized-text hash; minhash: the LSH band keys), saved as
   .npy with a marker;
2. documents get global indices (shard offsets) and duplicate groups are found. exact: the first of each hash wins
   (driver). minhash: one job per band turns equal band keys into edges; then rounds of label propagation, one job
   per node partition reading the edges and the current labels, with pointer jumping in between, until no label
   moves; the smallest index of each cluster wins. The edge work runs on the executor's workers (processes or Ray),
   so clustering does not funnel through one task;
3. per shard (parallel): kept documents are written to `dedup/`, dropped ones to `removed/` with their reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .dedup import (
    MinHashConfig,
    band_keys,
    band_pairs,
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
    _save(out, keys)
    result = {"docs": len(texts)}
    write_json(marker, result)
    return result


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def band_edges_job(job: dict) -> dict:
    """Edges (smallest index of a bucket, other member) of one LSH band over the whole corpus."""
    dst = Path(job["dst"])
    if not dst.exists():
        keys = np.concatenate([np.load(p, mmap_mode="r")[:, job["band"]] for p in job["keys"]])
        _save(dst, band_pairs(np.arange(len(keys), dtype=np.int64), keys))
    return {"edges": int(np.load(dst, mmap_mode="r").shape[0])}


def propagate_job(job: dict) -> dict:
    """One label-propagation round for the nodes i with i % parts == part: min over their neighbours' labels."""
    labels = np.load(job["labels"], mmap_mode="r")
    part, parts = job["part"], job["parts"]
    new = np.array(labels[part::parts])
    for path in job["edges"]:
        e = np.load(path, mmap_mode="r")
        u, v = np.asarray(e[:, 0]), np.asarray(e[:, 1])
        for a, b in ((u, v), (v, u)):
            sel = a % parts == part
            np.minimum.at(new, a[sel] // parts, labels[b[sel]])
    _save(Path(job["dst"]), new)
    return {"part": part}


def _components(jobs: list[dict], cfg: MinHashConfig, total: int, work: Path, executor) -> np.ndarray:
    """Cluster label (smallest member index) of every document, computed on the executor's workers."""
    bands = [{"keys": [j["keys"] for j in jobs], "band": b, "dst": str(work / f"edges-{b:03d}.npy")}
             for b in range(cfg.bands)]
    executor.map(band_edges_job, bands, desc="dedup edges")
    labels = np.arange(total, dtype=np.int64)
    parts = max(1, min(64, total // 100_000 + 1))
    for round_ in range(64):
        lpath = work / "labels.npy"
        _save(lpath, labels)
        rounds = [{"labels": str(lpath), "edges": [b["dst"] for b in bands], "part": p, "parts": parts,
                   "dst": str(work / f"labels-{p:03d}.npy")} for p in range(parts)]
        executor.map(propagate_job, rounds, desc=f"dedup components (round {round_ + 1})")
        new = labels.copy()
        for r in rounds:
            new[r["part"]::parts] = np.load(r["dst"])
        while True:  # pointer jumping: follow labels to their roots
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            return labels
        labels = new
    raise RuntimeError("dedup components did not converge in 64 rounds")


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
        total = int(offsets[-1])
        if method == "exact":
            hashes = np.concatenate([np.load(j["keys"])[:, 0] for j in jobs]).tolist()
            drop = np.array(sorted(exact_duplicates(hashes, list(range(total)))), dtype=np.int64)
        else:
            labels = _components(jobs, cfg, total, work, executor)
            drop = duplicates_to_drop(np.arange(total), labels)
        _save(drop_path, drop)
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
