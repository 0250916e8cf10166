"""Executors: run one function over many shard jobs, on local processes or on a Ray cluster.

Jobs are plain dicts (JSON-able), the function a module-level callable, so both executors run exactly the same code;
each job is idempotent and skips work its completion marker says is done, so either executor can resume.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable

from tqdm import tqdm


class LocalExecutor:
    """`workers` processes (1: in this process, which keeps tracebacks simple)."""

    def __init__(self, workers: int = 1, progress: bool = True):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers, self.progress = workers, progress

    def map(self, fn: Callable[[dict], dict], jobs: list[dict], desc: str = "") -> list[dict]:
        bar = dict(total=len(jobs), desc=desc, disable=not self.progress, unit="shard")
        if self.workers == 1 or len(jobs) <= 1:
            return [fn(j) for j in tqdm(jobs, **bar)]
        with mp.get_context("spawn").Pool(min(self.workers, len(jobs))) as pool:
            return list(tqdm(pool.imap(fn, jobs), **bar))


class RayExecutor:
    """Ray Data over the same jobs: one row per shard job, mapped by `fn` on the cluster's workers.

    Args:
        address: a running cluster's address, or None to start (or join) a local instance.
        num_cpus: CPUs of a local instance.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, progress: bool = True):
        try:
            import ray
        except ImportError:
            raise ImportError("the Ray executor needs `pip install shusheng-corpus[ray]`") from None
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=num_cpus, ignore_reinit_error=True, log_to_driver=False,
                     include_dashboard=False)
        self.ray = ray
        ray.data.DataContext.get_current().enable_progress_bars = progress

    def map(self, fn: Callable[[dict], dict], jobs: list[dict], desc: str = "") -> list[dict]:
        import json

        if not jobs:
            return []
        ds = self.ray.data.from_items([{"i": i, "job": json.dumps(j)} for i, j in enumerate(jobs)])
        out = ds.map(lambda row: {"i": row["i"], "result": json.dumps(fn(json.loads(row["job"])))},
                     concurrency=None).take_all()
        return [json.loads(r["result"]) for r in sorted(out, key=lambda r: r["i"])]


def make_executor(kind: str, workers: int = 1, ray_address: str | None = None, progress: bool = True):
    if kind == "local":
        return LocalExecutor(workers, progress)
    if kind == "ray":
        return RayExecutor(ray_address, num_cpus=workers, progress=progress)
    raise ValueError(f"executor must be 'local' or 'ray', got {kind!r}")
