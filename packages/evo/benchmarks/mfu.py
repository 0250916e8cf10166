"""Pretraining throughput and MFU: shusheng-evo vs plain Hugging Face transformers, same shapes, same run.

    python packages/evo/benchmarks/mfu.py --out mfu.json              # one GPU: InternLM2-1.8B, seq 4096
    python packages/evo/benchmarks/mfu.py --tiny --steps 2 --warmup 1 # CPU smoke run

Baseline: `transformers.LlamaForCausalLM` with the InternLM2-1.8B preset's shapes, fp32 weights, bf16 autocast,
gradient checkpointing, fused AdamW, batch 4 x 4096 of packed rows (the configuration measured in
shared/notes/h100-measurements.md). Ours: `shusheng-evo train` on the same synthetic shards, same global batch
(16,384 tokens per step), in several settings; each run is its own process (clean peak memory). MFU counts
6N + 12 L H T FLOPs per token against the card's dense bf16 peak, for both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _common import step_stats, write_synthetic_shards  # noqa: E402

# name -> overrides of the evo config (global batch fixed; micro_batch x grad_accum = rows per step)
VARIANTS = {
    "docs-compile-mb1": {"data.packing": "documents", "compile": True, "micro_batch": 1},
    "docs-compile-mb2": {"data.packing": "documents", "compile": True, "micro_batch": 2},
    "docs-compile-mb4": {"data.packing": "documents", "compile": True, "micro_batch": 4},
    "concat-compile-mb2": {"data.packing": "concat", "compile": True, "micro_batch": 2},
    "docs-eager-mb2": {"data.packing": "documents", "compile": False, "micro_batch": 2},
}


def run_hf(a, shards: Path) -> dict:
    """The baseline, in this process."""
    import torch
    import transformers

    from shusheng.evo import PackedStream, TokenSource, build_batch
    from shusheng.model import ModelConfig
    from shusheng.model.training import flops_per_token, mfu, peak_flops

    cfg = ModelConfig.from_name(a.preset)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf_cfg = transformers.LlamaConfig(**cfg.to_hf("llama"))
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(hf_cfg).to(device=device, dtype=torch.float32)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device == "cuda")
    stream = PackedStream([TokenSource(str(shards))], [1.0], a.seq, seed=0)
    times = []
    for step in range(a.warmup + a.steps):
        batch = build_batch(stream, [stream.next_plan() for _ in range(a.rows)], "concat", (0, 0))
        ids, labels = batch.input_ids.to(device), batch.input_ids.to(device)  # HF shifts labels itself
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    tps = a.rows * a.seq / times[len(times) // 2]
    name, peak = peak_flops(device)
    return {"tokens_per_s": tps, "tokens_per_s_per_gpu": tps, "mfu": mfu(tps, flops_per_token(cfg, a.seq), peak),
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0,
            "loss": float(loss), "device": name, "steps": len(times)}


def run_ours(a, shards: Path, name: str, overrides: dict, work: Path) -> dict:
    cfg = {"model": {"preset": a.preset}, "data": {"sources": [{"path": str(shards)}]}, "seq_len": a.seq,
           "global_batch_tokens": a.rows * a.seq, "steps": a.warmup + a.steps, "optim": {"warmup_steps": 2},
           "mixed_precision": "bf16" if not a.tiny else "fp32", "output": str(work / name),
           "checkpoint": {"at_end": False, "resume": False}, "log_every": 1}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    cmd = [sys.executable, "-m", "shusheng.evo.cli", "train", str(path), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return step_stats(work / name / "metrics.jsonl", a.warmup)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="internlm2-1.8b")
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--rows", type=int, default=4, help="rows per optimizer step (global batch = rows x seq)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny preset, seq 128")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--role", default="driver", help=argparse.SUPPRESS)
    p.add_argument("--shards", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.tiny:
        a.preset, a.seq = "tiny", 128
    if a.role == "hf":
        print(json.dumps(run_hf(a, Path(a.shards))))
        return 0
    from shusheng.model import ModelConfig

    vocab = ModelConfig.from_name(a.preset).vocab_size
    work = Path(tempfile.mkdtemp(prefix="evo-mfu-"))
    shards = write_synthetic_shards(work / "shards", vocab, a.rows * a.seq * (a.warmup + a.steps + 2) * 2)
    results = {}
    base_cmd = [sys.executable, __file__, "--role", "hf", "--shards", str(shards), "--preset", a.preset,
                "--seq", str(a.seq), "--rows", str(a.rows), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    proc = subprocess.run(base_cmd + (["--tiny"] if a.tiny else []), capture_output=True, text=True)
    results["hf-transformers"] = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                                  else {"error": proc.stderr[-2000:]})
    for name in a.variants.split(","):
        results[name] = run_ours(a, shards, name, VARIANTS[name], work)
    base = results["hf-transformers"].get("tokens_per_s")
    print(f"{a.preset}, seq {a.seq}, {a.rows} rows/step, device {results['hf-transformers'].get('device')}")
    print(f"{'run':22s} {'tokens/s':>10s} {'MFU':>7s} {'peak GB':>8s} {'vs HF':>6s}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:22s} FAILED: {r['error'].strip().splitlines()[-1] if r['error'].strip() else '?'}")
            continue
        m = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"{name:22s} {r['tokens_per_s']:10.0f} {m:>7s} {r['peak_mem_gb']:8.1f} {ratio:>6s}")
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "results": results}, indent=2) + "\n")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
