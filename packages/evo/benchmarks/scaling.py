"""Weak scaling of shusheng-evo: the same per-GPU batch on 1, 2, 4, ... GPUs of one host (torchrun, FSDP2).

    python packages/evo/benchmarks/scaling.py --gpus 1,2,4 --out scaling.json
    python packages/evo/benchmarks/scaling.py --tiny --gpus 1,2 --steps 2 --warmup 1   # CPU (gloo) smoke run

Efficiency(N) = tokens/s/GPU at N GPUs / tokens/s/GPU at 1 GPU (median over the timed steps of each run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _common import step_stats, write_synthetic_shards  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="internlm2-1.8b")
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--gpus", default="1,2,4")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--set", nargs="*", default=["compile=true", "data.packing=documents"],
                   help="extra config overrides for every run")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny preset, seq 128, gloo")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.tiny:
        a.preset, a.seq = "tiny", 128
        a.set = [s for s in a.set if not s.startswith("compile")]
    from shusheng.model import ModelConfig

    work = Path(tempfile.mkdtemp(prefix="evo-scaling-"))
    counts = [int(g) for g in a.gpus.split(",")]
    rows = a.micro_batch * a.grad_accum
    shards = write_synthetic_shards(work / "shards", ModelConfig.from_name(a.preset).vocab_size,
                                    rows * a.seq * max(counts) * (a.steps + a.warmup + 2) * 2)
    results = {}
    for n in counts:
        out = work / f"gpus{n}"
        cfg = {"model": {"preset": a.preset}, "data": {"sources": [{"path": str(shards)}]}, "seq_len": a.seq,
               "micro_batch": a.micro_batch, "global_batch_tokens": rows * a.seq * n, "steps": a.steps + a.warmup,
               "mixed_precision": "fp32" if a.tiny else "bf16", "output": str(out),
               "checkpoint": {"at_end": False, "resume": False}, "device": "cpu" if a.tiny else "auto"}
        path = work / f"gpus{n}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m",
               "shusheng.evo.cli", "train", str(path), *a.set]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        results[n] = step_stats(out / "metrics.jsonl", a.warmup) if proc.returncode == 0 else \
            {"error": proc.stderr[-3000:]}
    base = results[counts[0]].get("tokens_per_s_per_gpu")
    print(f"{a.preset}, seq {a.seq}, per GPU {a.micro_batch} x {a.grad_accum} rows per step, {a.set}")
    print(f"{'GPUs':>5s} {'tokens/s':>10s} {'tok/s/GPU':>10s} {'MFU':>7s} {'efficiency':>10s}")
    for n, r in results.items():
        if "error" in r:
            print(f"{n:5d} FAILED: {r['error'].strip().splitlines()[-1] if r['error'].strip() else '?'}")
            continue
        r["efficiency"] = r["tokens_per_s_per_gpu"] / base if base else None
        m = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        print(f"{n:5d} {r['tokens_per_s']:10.0f} {r['tokens_per_s_per_gpu']:10.0f} {m:>7s} "
              f"{r['efficiency']:10.1%}" if r["efficiency"] is not None else "")
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "results": results}, indent=2) + "\n")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
