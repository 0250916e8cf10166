"""Decode-step knobs against the defaults, on one engine, in the same run: which GEMMs the tuner may pick, SwiGLU in
the w1|w3 GEMM's epilogue, and the decode attention's tile and split sizes.

Run on one Hopper GPU:
    python packages/deploy/benchmarks/decode_knobs.py [--presets internlm2-1.8b,internlm2-7b] [--batches 1,16]
        [--rounds 2] [--variants default,attn 64] [--json out.json]

Per preset (random bf16 weights, as throughput.py) one engine; then, round after round, each variant in turn, the
skinny-GEMM picks timed again and the CUDA graphs captured again:
- `default`: cuBLAS among the GEMM candidates, 128-token attention tiles, splits of at least 256 tokens;
- `triton gemms`: the tuner times only the Triton skinny-GEMM configurations (`gemv.TUNE_CUBLAS = False`), so every
  decode GEMM launches with programmatic dependent launch (cuBLAS's kernels do not);
- `attn 64`: 64-token attention tiles and splits of at least 64 tokens (more, shorter programs over a short
  context);
- `both`;
- `separate silu`: the w1|w3 GEMM never applies SwiGLU in its epilogue (`gemv.GLU_EPILOGUE = False`); the
  activation is a kernel of its own after it, as before the epilogue existed.
Time per decode step as pdl.py measures it (throughput.py's batch-1 latency at each batch size), the median over
rounds, its ratio to `default` and, at batch 1, to the weight floor.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pdl import bench_preset  # noqa: E402

gemv = importlib.import_module("shusheng.deploy.kernels.gemv")  # (the package exports a function of that name)
attention = importlib.import_module("shusheng.deploy.kernels.decode_attention")
DEFAULTS = (gemv.TUNE_CUBLAS, attention.MAX_BLOCK_N, attention.MIN_SPLIT_TOKENS)


def knobs(cublas: bool = True, tile: int = DEFAULTS[1], min_split: int = DEFAULTS[2], glu: bool = True):
    def setup():
        gemv._picked.clear()
        gemv.TUNE_CUBLAS, attention.MAX_BLOCK_N, attention.MIN_SPLIT_TOKENS = cublas, tile, min_split
        gemv.GLU_EPILOGUE = glu
    return setup


VARIANTS = {
    "default": knobs(),
    "triton gemms": knobs(cublas=False),
    "attn 64": knobs(tile=64, min_split=64),
    "both": knobs(cublas=False, tile=64, min_split=64),
    "separate silu": knobs(glu=False),
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="internlm2-1.8b,internlm2-7b")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names among: " + ", ".join(VARIANTS))
    p.add_argument("--json", default=None)
    a = p.parse_args()
    unknown = [v for v in a.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose among {list(VARIANTS)}")
    variants = {v: VARIANTS[v] for v in a.variants.split(",")}
    print(torch.cuda.get_device_name(), flush=True)
    out = [bench_preset(name, [int(b) for b in a.batches.split(",")], a.rounds, variants, knobs())
           for name in a.presets.split(",")]
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
