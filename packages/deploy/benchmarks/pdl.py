"""Programmatic dependent launch in decode steps: on against off, on one engine, in the same run.

Run on one Hopper GPU:
    python packages/deploy/benchmarks/pdl.py [--presets internlm2-1.8b,internlm2-7b] [--batches 1,16,64]
        [--rounds 2] [--json out.json]

Per preset (random bf16 weights, as throughput.py): one engine; then, round after round, both variants in turn,
the CUDA graphs captured again with the variant's launches:
- `plain`: every kernel waits for the previous one to finish (set_pdl(False));
- `pdl`: the decode kernels launch with programmatic dependent launch and wait at their start (the default).
(A third variant, each skinny-GEMM program first asking L2 for the first 64 or 256 KB of its weights before the
wait, gained nothing and was removed: docs/benchmarks.md.)
Time per decode step at each batch size: (T(256 tokens) - T(128 tokens)) / 128 for that many requests of 128
prompt tokens, as throughput.py's batch-1 latency (prefill and pipeline start cancel out), best of two. Prints each
variant's median over rounds and its ratio to `plain`, and the batch-1 floor (weights / copy bandwidth).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import decode_step_time, random_model  # noqa: E402

from shusheng.deploy import EngineConfig, LLMEngine  # noqa: E402
from shusheng.deploy.bench import Workload, measure_ceilings, roofline, synthetic_tokenizer_file  # noqa: E402
from shusheng.deploy.kernels._triton import set_pdl  # noqa: E402
from shusheng.model import ModelConfig, load_tokenizer  # noqa: E402

gemv = importlib.import_module("shusheng.deploy.kernels.gemv")  # (the package exports a function of that name)

# variant -> what sets it up (before the graphs are captured again); the first is the baseline
VARIANTS = {"plain": lambda: set_pdl(False), "pdl": lambda: set_pdl(True)}


def use(engine: LLMEngine, setup) -> None:
    setup()
    engine.runner.release_graphs()
    engine.runner._capture_graphs()


def bench_preset(name: str, batches: list[int], rounds: int, variants: dict = VARIANTS, reset=lambda: set_pdl(None)
                 ) -> dict:
    """Decode step times of `variants` (name -> set-up function) on one engine of preset `name`, in alternating
    order over `rounds`; `reset` restores the defaults afterwards. Ratios are to the first variant."""
    cfg = ModelConfig.from_name(name)
    model = random_model(cfg)
    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(synthetic_tokenizer_file(Path(d), cfg.vocab_size))
    engine = LLMEngine(EngineConfig(model=name, device="cuda", max_model_len=1024, max_num_seqs=max(batches),
                                    gpu_memory_utilization=0.9), tokenizer=tok, model=model)
    for b in batches:  # warm-up: every kernel configuration and context length of the measured runs
        decode_step_time(engine, b, warmup=False)
    picks = [cfg_[0] for cfg_ in gemv._picked.values()]
    times: dict[str, dict[int, list[float]]] = {v: {b: [] for b in batches} for v in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for v in order:
            use(engine, variants[v])
            decode_step_time(engine, 1, new_tokens=32, warmup=False)  # the new graphs' first replays
            for b in batches:
                times[v][b].append(decode_step_time(engine, b, warmup=False))
    reset()
    engine.runner.release_graphs()
    engine.runner._capture_graphs()
    ceilings = measure_ceilings()
    floor_ms = roofline(cfg, Workload(8, (128, 128), (256, 256)).sample(cfg.vocab_size), ceilings,
                        max_num_seqs=1)["batch1_decode_floor_ms"]
    res = {"preset": name, "batch1_floor_ms": floor_ms, "bandwidth": ceilings["bandwidth"], "gemm_picks": picks,
           "ms_per_step": {v: {b: [t * 1e3 for t in ts] for b, ts in by.items()} for v, by in times.items()}}
    print(f"== {name}: batch-1 floor {floor_ms:.3f} ms; GEMM picks {sorted(set(picks))} "
          f"({picks.count('cublas')} of {len(picks)} cuBLAS)")
    first = next(iter(variants))
    base = {b: statistics.median(times[first][b]) for b in batches}
    for v in variants:
        cells = []
        for b in batches:
            med = statistics.median(times[v][b])
            cells.append(f"b{b} {med * 1e3:.3f} ms (x{med / base[b]:.3f}"
                         + (f", {med * 1e3 / floor_ms:.2f}x floor)" if b == 1 else ")"))
        print(f"  {v:>17}: " + "; ".join(cells), flush=True)
    del engine, model
    torch.cuda.empty_cache()
    return res


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="internlm2-1.8b,internlm2-7b")
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    out = [bench_preset(name, [int(b) for b in a.batches.split(",")], a.rounds) for name in a.presets.split(",")]
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
