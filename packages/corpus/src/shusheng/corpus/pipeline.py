"""The pipeline: document stages per shard, then deduplication over the corpus, then tokenization and packing.

Layout of an output folder:

    stages/NNNNN-NAME.jsonl.gz      documents kept by the stages, one file per input shard
    stages/NNNNN-NAME.done          completion marker with the shard's stats (written last)
    dedup/...                       the same after deduplication (when configured)
    removed/NNNNN-NAME.STEP.jsonl.gz  every removed document, with metadata.removed = {step, stage, reason}
    tokens/                         Megatron .bin/.idx shards and metadata.json (when configured)
    report.json, report.md, *.png   the run's report

Every file is written under a temporary name and renamed when complete; a shard with a marker is never redone, so
rerunning after a crash (or after success) does only the missing work.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .document import Document, Removed
from .executors import make_executor
from .io import ShardWriter, list_inputs, read_file, write_json
from .stages import build_stage


@dataclass
class PipelineConfig:
    input: str | list[str] = ""
    output: str = ""
    # auto: data files by suffix; code: a folder of source repositories (one per sub-folder); hf: `input` names a
    # Hugging Face dataset (hub name or local folder), read through `datasets` with `hf_options` (split, data_files...)
    input_format: str = "auto"
    hf_options: dict[str, Any] = field(default_factory=dict)
    repos_per_shard: int = 64
    text_key: str = "text"
    id_key: str = "id"
    stages: list[dict[str, Any]] = field(default_factory=list)
    dedup: dict[str, Any] | None = None  # {"method": "exact" | "minhash", "preset": "internlm2", ...}
    tokenize: dict[str, Any] | None = None  # {"tokenizer": PATH, "docs_per_shard": N, ...}
    executor: str = "local"  # local | ray
    workers: int = 1
    progress: bool = True

    def __post_init__(self):
        if not self.input:
            raise ValueError("pipeline config: `input` is required (files, folders or globs)")
        if not self.output:
            raise ValueError("pipeline config: `output` is required (a folder)")
        if self.input_format not in ("auto", "code", "hf"):
            raise ValueError(f"pipeline config: input_format must be auto, code or hf, got {self.input_format!r}")
        if self.executor not in ("local", "ray"):
            raise ValueError(f"pipeline config: executor must be 'local' or 'ray', got {self.executor!r}")
        for i, spec in enumerate(self.stages):
            if not isinstance(spec, dict) or "stage" not in spec:
                raise ValueError(f"pipeline config: stages[{i}] must be a mapping with a `stage` name")
            build_stage(spec)  # validates names and options now, not halfway through a run

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> PipelineConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pipeline config {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a mapping of fields")
        data.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {unknown}; fields: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


# ---- the stage pass (one job per input shard) ----


def _shard_name(i: int, path: Path) -> str:
    stem = path.name.split(".")[0]
    return f"{i:05d}-{stem}"


def _job_documents(job: dict):
    if "repos" in job:  # source repositories: one document each, files in dependency order
        from .code import repo_document

        for repo in job["repos"]:
            doc = repo_document(repo)
            if doc is not None:
                yield doc
        return
    if "hf" in job:
        from .io import read_hf

        yield from read_hf(job["path"], text_key=job["text_key"], **job["hf"])
        return
    yield from read_file(job["path"], job["text_key"], job["id_key"])


def _jobs(cfg: PipelineConfig, out: Path) -> list[dict]:
    common = {"output": str(out), "stages": cfg.stages, "text_key": cfg.text_key, "id_key": cfg.id_key}
    if cfg.input_format == "code":
        roots = [Path(p) for p in ([cfg.input] if isinstance(cfg.input, str) else cfg.input)]
        for r in roots:
            if not r.is_dir():
                raise FileNotFoundError(f"code input {r} is not a folder of repositories")
        repos = sorted(str(d) for r in roots for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not repos:
            raise FileNotFoundError(f"no repositories (sub-folders) in {cfg.input}")
        n = cfg.repos_per_shard
        return [{**common, "repos": repos[i : i + n], "path": repos[i], "name": f"{i // n:05d}-repos"}
                for i in range(0, len(repos), n)]
    if cfg.input_format == "hf":
        name = cfg.input if isinstance(cfg.input, str) else cfg.input[0]
        return [{**common, "path": name, "hf": cfg.hf_options, "name": "00000-hf"}]
    files = list_inputs(cfg.input)
    return [{**common, "path": str(f), "name": _shard_name(i, f)} for i, f in enumerate(files)]


def run_stage_shard(job: dict) -> dict:
    """Apply the stages to one input file; returns (and stores in the marker) the shard's stats."""
    out = Path(job["output"])
    name = job["name"]
    marker = out / "stages" / f"{name}.done"
    if marker.exists():
        return json.loads(marker.read_text())
    stages = [build_stage(s) for s in job["stages"]]
    for st in stages:
        st.setup()
    stats = {st.name: {"in_docs": 0, "in_bytes": 0, "out_docs": 0, "out_bytes": 0, "removed": Counter()}
             for st in stages}
    samples: dict[str, list] = {"length": [], "language": [], "quality_score": []}
    total_in = 0
    with ShardWriter(out / "stages" / f"{name}.jsonl.gz") as kept, \
            ShardWriter(out / "removed" / f"{name}.stages.jsonl.gz") as removed:
        for doc in _job_documents(job):
            total_in += 1
            result: Document | Removed = doc
            for st in stages:
                s = stats[st.name]
                s["in_docs"] += 1
                s["in_bytes"] += len(result.text.encode())
                res = st.process(result)
                if isinstance(res, Removed):
                    s["removed"][res.reason] += 1
                    doc.metadata["removed"] = {"step": "stages", "stage": st.name, "reason": res.reason}
                    removed.write(doc)
                    result = res
                    break
                result = res
                s["out_docs"] += 1
                s["out_bytes"] += len(result.text.encode())
            if isinstance(result, Document):
                kept.write(result)
                samples["length"].append(len(result.text))
                for key in ("language", "quality_score"):
                    if key in result.metadata:
                        samples[key].append(result.metadata[key])
    result = {"name": name, "input": job["path"], "docs_in": total_in, "docs_out": kept.count,
              "stages": {k: {**v, "removed": dict(v["removed"])} for k, v in stats.items()}, "samples": samples}
    write_json(marker, result)  # last: the shard counts as done only once everything above is in place
    return result


# ---- running ----


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run (or resume) the whole pipeline; returns the report dict (also written as report.json / report.md)."""
    t0 = time.time()
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.rglob(".*.tmp*"):  # temporary files of a run that was killed (their work is redone)
        stale.unlink()
    jobs = _jobs(cfg, out)
    ex = make_executor(cfg.executor, cfg.workers, progress=cfg.progress)
    shard_stats = ex.map(run_stage_shard, jobs, desc="stages")
    report = {"input_files": len(jobs), "stages": _merge_stage_stats(shard_stats)}
    current = [out / "stages" / f"{j['name']}.jsonl.gz" for j in jobs]
    if cfg.dedup:
        from .dedup_step import run_dedup

        report["dedup"], current = run_dedup(cfg.dedup, current, out, ex)
    if cfg.tokenize:
        from .tokenize_step import run_tokenize

        report["tokenize"] = run_tokenize(cfg.tokenize, current, out)
    report["docs_in"] = sum(s["docs_in"] for s in shard_stats)
    report["docs_out"] = report["dedup"]["docs_out"] if cfg.dedup else sum(s["docs_out"] for s in shard_stats)
    report["outputs"] = [str(p) for p in current]
    report["seconds"] = round(time.time() - t0, 2)
    from .report import write_report

    write_report(report, _samples(shard_stats), out)
    return report


def _merge_stage_stats(shards: list[dict]) -> dict:
    merged: dict[str, dict] = {}
    for s in shards:
        for name, st in s["stages"].items():
            m = merged.setdefault(name, {"in_docs": 0, "in_bytes": 0, "out_docs": 0, "out_bytes": 0, "removed": {}})
            for k in ("in_docs", "in_bytes", "out_docs", "out_bytes"):
                m[k] += st[k]
            for reason, n in st["removed"].items():
                m["removed"][reason] = m["removed"].get(reason, 0) + n
    return merged


def _samples(shards: list[dict]) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in shards:
        for k, v in s["samples"].items():
            out.setdefault(k, []).extend(v)
    return out
