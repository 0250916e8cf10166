"""Deduplication as a pipeline step over shards, in three resumable phases.

1. per shard (parallel): a key per document (exact: a normalized-text hash; minhash: the LSH band keys), saved as
   .npy with a marker; with MinHash verification also what it checks, per document: the shingle sets ("exact",
   values + offsets) or the signatures ("estimate");
2. documents get global indices (shard offsets) and duplicate groups are found. exact: the first of each hash wins
   (driver). minhash: one job per band turns equal band keys into edges, verifying candidates when configured (the
   job reads, through memory maps, only the shingle sets or signatures of documents whose key in its band is shared);
   then rounds of label propagation, one job per node partition reading the edges and the current labels, with
   pointer jumping in between, until no label moves; the smallest index of each cluster wins. The edge work runs on
   the executor's workers (processes or Ray), so clustering does not funnel through one task;
3. per shard (parallel): kept documents are written to `dedup/`, dropped ones to `removed/` with their reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .dedup import (
    MinHashConfig,
    band_keys,
    band_pairs,
    duplicates_to_drop,
    exact_duplicates,
    pair_similarity,
    signatures_and_sets,
    text_hash,
)
from .dedup.verify import ranges
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
        sig, sets = signatures_and_sets(texts, cfg)
        keys = band_keys(sig, cfg.bands, cfg.rows)
        if cfg.verify == "estimate":
            _save(_side(out, "sig"), sig)
        elif cfg.verify == "exact":
            _save(_side(out, "sets"), sets[0])
            _save(_side(out, "set_offsets"), sets[1])
    _save(out, keys)
    result = {"docs": len(texts)}
    write_json(marker, result)
    return result


def _side(keys: str | Path, name: str) -> Path:
    """A per-shard file next to the keys: part.keys.npy -> part.{name}.npy."""
    keys = Path(keys)
    return keys.with_name(keys.name.replace(".keys.npy", f".{name}.npy"))


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def band_edges_job(job: dict) -> dict:
    """Edges of one LSH band over the whole corpus: (smallest index of a bucket, other member), or with verification
    the verified pairs of `band_pairs`' leader rounds."""
    dst = Path(job["dst"])
    if not dst.exists():
        _, cfg = _config(job["spec"])
        columns = [np.load(p, mmap_mode="r")[:, job["band"]] for p in job["keys"]]
        keys = np.concatenate(columns)
        ids = np.arange(len(keys), dtype=np.int64)
        if cfg.verify == "none":
            pairs = band_pairs(ids, keys)
        else:  # read the data of only the documents that share their key in this band
            _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
            ids = ids[counts[inverse] > 1]
            sig, sets = _gather(job["keys"], [len(c) for c in columns], ids, cfg.verify)
            pairs = band_pairs(ids, keys[ids], similarity=pair_similarity(cfg, sig, sets), threshold=cfg.threshold)
        _save(dst, pairs)
    return {"edges": int(np.load(dst, mmap_mode="r").shape[0])}


def _gather(keys: list[str], counts: list[int], ids: np.ndarray, verify: str) -> tuple:
    """(signatures, None) or (None, shingle sets) of the documents with these sorted global indices."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    shard = np.searchsorted(offsets, ids, "right") - 1
    sig, values, lengths = [], [], []
    for s in np.unique(shard):
        rows = ids[shard == s] - offsets[s]
        if verify == "estimate":
            sig.append(np.load(_side(keys[s], "sig"), mmap_mode="r")[rows])
            continue
        bounds = np.load(_side(keys[s], "set_offsets"), mmap_mode="r")
        starts, sizes = bounds[rows], bounds[rows + 1] - bounds[rows]
        values.append(np.load(_side(keys[s], "sets"), mmap_mode="r")[ranges(starts, sizes)])
        lengths.append(sizes)
    if verify == "estimate":
        return np.concatenate(sig) if sig else np.zeros((0, 1), np.uint32), None
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    values = np.concatenate(values) if values else np.zeros(0, np.uint32)
    return None, (values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


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


def _components(jobs: list[dict], spec: dict, cfg: MinHashConfig, total: int, work: Path, executor) -> np.ndarray:
    """Cluster label (smallest member index) of every document, computed on the executor's workers."""
    bands = [{"keys": [j["keys"] for j in jobs], "band": b, "spec": spec, "dst": str(work / f"edges-{b:03d}.npy")}
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


def _check_settings(work: Path, settings: dict) -> None:
    """A rerun resumes only work made with the same settings: keys, edges and drops of other ones would be reused
    silently (or miss the files verification needs)."""
    path = work / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            was = ", ".join(f"{k}: {old.get(k)!r}" for k in changed)
            now = ", ".join(f"{k}: {settings.get(k)!r}" for k in changed)
            raise ValueError(f"dedup: {work} holds work made with other settings ({was}; now {now}); delete that "
                             "folder to deduplicate again, or use another output folder")
    else:
        write_json(path, settings)


def run_dedup(spec: dict, shards: list[Path], out: Path, executor) -> tuple[dict, list[Path]]:
    method, cfg = _config(spec)
    work = out / "dedup"
    work.mkdir(parents=True, exist_ok=True)
    _check_settings(work, {"method": method, **(asdict(cfg) if cfg is not None else {})})
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
            labels = _components(jobs, spec, cfg, total, work, executor)
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
                      ngram_size=cfg.ngram_size, threshold=cfg.threshold, verify=cfg.verify)
    return report, [Path(j["dst"]) for j in fjobs]
