"""The decode step's linear layers at 1..16 rows: cuBLAS (`F.linear`) against the skinny-GEMM kernels, same run.

    python packages/deploy/benchmarks/gemv.py [--presets internlm2-1.8b,internlm2-7b] [--rows 1,4,16] [--json F]

For each preset's weight shapes (wqkv, wo, w1|w3, w2, output head) and row count: microseconds per call as a decode
step runs them (inside a CUDA graph, cycling through weight copies that do not fit in L2: `kernels.gemv.tune`), for
cuBLAS and for the fastest Triton configuration; the weight's read rate as a share of the measured copy bandwidth;
and the sum over one decode step's GEMMs (every layer plus the head) against the weight-bandwidth floor, with
cuBLAS only and with the engine's pick per shape (the faster of the two).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from shusheng.deploy.bench import measure_ceilings
from shusheng.deploy.kernels.gemv import CUBLAS, gemv, tune
from shusheng.model import ModelConfig


def shapes(cfg: ModelConfig) -> dict[str, tuple[int, int, int]]:
    """name -> (N, K, uses per step)."""
    D, Dh, F_ = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    L = cfg.num_layers
    return {
        "wqkv": ((cfg.num_heads + 2 * cfg.num_kv_heads) * Dh, D, L),
        "wo": (D, cfg.num_heads * Dh, L),
        "w13": (2 * F_, D, L),
        "w2": (D, F_, L),
        "output": (cfg.vocab_size, D, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="internlm2-1.8b,internlm2-7b")
    p.add_argument("--rows", default="1,4,16")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    bw = measure_ceilings()["bandwidth"]
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e12:.2f} TB/s (read + written)")
    res = {"device": torch.cuda.get_device_name(), "copy_bandwidth": bw, "rows": []}
    for preset in args.presets.split(","):
        cfg = ModelConfig.from_name(preset)
        for M in (int(m) for m in args.rows.split(",")):
            step = {"cublas": 0.0, "triton": 0.0, "picked": 0.0, "bytes": 0.0}
            for name, (N, K, uses) in shapes(cfg).items():
                w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K**0.5
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                times = tune(x, w, None, x.new_empty(M, N))
                t_cublas = times.pop(CUBLAS)
                best = min(times, key=times.get)
                t_ours = times[best]
                ref = F.linear(x, w).float()
                err = ((gemv(x, w, config=best).float() - ref).norm() / ref.norm()).item()
                nbytes = w.numel() * 2
                row = {"preset": preset, "rows": M, "name": name, "N": N, "K": K, "cublas_us": t_cublas * 1e6,
                       "triton_us": t_ours * 1e6, "triton_vs_cublas": t_cublas / t_ours, "config": best,
                       "rel_err": err, "triton_share_of_copy_bw": nbytes / t_ours / bw,
                       "cublas_share_of_copy_bw": nbytes / t_cublas / bw,
                       "all_us": {str(c): t * 1e6 for c, t in times.items()}}
                res["rows"].append(row)
                step["cublas"] += uses * t_cublas
                step["triton"] += uses * t_ours
                step["picked"] += uses * min(t_ours, t_cublas)
                step["bytes"] += uses * nbytes
                print(f"{preset} M={M:2d} {name:6s} {N:6d}x{K:5d}: cuBLAS {t_cublas * 1e6:6.1f} us "
                      f"({row['cublas_share_of_copy_bw']:.0%} of copy bw), Triton {t_ours * 1e6:6.1f} us "
                      f"({row['triton_share_of_copy_bw']:.0%}) -> {row['triton_vs_cublas']:.2f}x; {best}; "
                      f"rel err {err:.1e}", flush=True)
                del w, x
            floor = step["bytes"] / bw
            print(f"{preset} M={M:2d} one step's GEMMs: cuBLAS {step['cublas'] * 1e3:.3f} ms, engine's pick "
                  f"{step['picked'] * 1e3:.3f} ms ({step['cublas'] / step['picked']:.2f}x); weight floor "
                  f"{floor * 1e3:.3f} ms", flush=True)
            res["rows"].append({"preset": preset, "rows": M, "name": "step", **{k: v * 1e6 for k, v in step.items()
                                                                                 if k != "bytes"},
                                "floor_us": floor * 1e6})
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
