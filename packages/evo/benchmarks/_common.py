"""Helpers shared by the evo benchmarks: synthetic shards and reading a run's step metrics."""

from __future__ import annotations

import json
import statistics
import struct
from pathlib import Path

import numpy as np


def write_synthetic_shards(folder: Path, vocab: int, num_tokens: int, mean_doc: int = 1500, seed: int = 0) -> Path:
    """Random-token documents with log-normal lengths (mean ~`mean_doc`, as in web text), in MMIDIDX v1 / int32."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / "synthetic-00000"
    if Path(str(prefix) + ".idx").exists():
        return folder
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < num_tokens:
        lengths.append(int(np.clip(rng.lognormal(np.log(mean_doc) - 0.5, 1.0), 16, 32768)))
    lengths = np.asarray(lengths, np.int32)
    tokens = rng.integers(3, vocab, int(lengths.sum()), dtype=np.int32)
    Path(str(prefix) + ".bin").write_bytes(tokens.tobytes())
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1].astype(np.int64) * 4)])
    header = struct.pack("<9sQBQQ", b"MMIDIDX\x00\x00", 1, 4, len(lengths), len(lengths) + 1)
    Path(str(prefix) + ".idx").write_bytes(header + lengths.tobytes() + pointers.astype(np.int64).tobytes()
                                           + np.arange(len(lengths) + 1, dtype=np.int64).tobytes())
    return folder


def step_stats(metrics: Path, warmup: int) -> dict:
    """Median tokens/s (and per GPU), MFU and the peak memory over the steps after `warmup`."""
    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in recs if "loss" in r and r["step"] > warmup]
    if not steps:
        raise RuntimeError(f"{metrics} has no steps after the {warmup} warm-up steps")
    start = next((r for r in recs if r.get("event") == "start"), {})
    med = lambda k: statistics.median(r[k] for r in steps)  # noqa: E731
    return {"tokens_per_s": med("tokens_per_s"), "tokens_per_s_per_gpu": med("tokens_per_s_per_gpu"),
            "mfu": med("mfu") if steps[0].get("mfu") is not None else None,
            "peak_mem_gb": max(r.get("peak_mem_gb", 0.0) for r in steps), "loss": steps[-1]["loss"],
            "device": start.get("device"), "world_size": start.get("world_size"), "steps": len(steps)}
