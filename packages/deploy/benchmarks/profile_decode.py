"""Where a decode step's time goes: torch.profiler over batch-1 (or --batch) decode steps of a random-weight preset.

    python packages/deploy/benchmarks/profile_decode.py [--preset internlm2-1.8b] [--batch 1] [--steps 30]

Prints milliseconds per step, whether the CUDA graph replayed, and the top operators by CPU and by CUDA time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from throughput import random_model  # same folder

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams
from shusheng.deploy.bench import synthetic_tokenizer_file
from shusheng.model import ModelConfig, load_tokenizer


def count_syncs(engine: LLMEngine) -> list[str]:
    """Messages of the synchronizing CUDA calls made by ten engine steps, one of them with a new prompt's prefill
    (reading the sampled tokens back through the step's CUDA event is the one intended wait, and is not one)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for i in range(10):
                if i == 3:
                    engine.add_request(list(range(5, 300)), SamplingParams(max_tokens=4, temperature=0.0))
                engine.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="internlm2-1.8b")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    cfg = ModelConfig.from_name(args.preset)
    model = random_model(cfg)
    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(synthetic_tokenizer_file(Path(d), cfg.vocab_size))
    engine = LLMEngine(EngineConfig(model=args.preset, device="cuda", max_model_len=2048, max_num_seqs=256),
                       tokenizer=tok, model=model)
    for _ in range(args.batch):
        engine.add_request(list(range(3, 131)), SamplingParams(max_tokens=4 * args.steps, ignore_eos=True,
                                                               temperature=0.0))
    for _ in range(5):
        engine.step()
    torch.cuda.synchronize()
    replays = engine.runner.graph_replays
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    replays = engine.runner.graph_replays - replays
    t0 = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    torch.cuda.synchronize()
    plain = (time.perf_counter() - t0) / args.steps
    print(f"{args.preset} batch {args.batch}: {plain * 1e3:.2f} ms/step ({dt * 1e3:.2f} under the profiler); "
          f"CUDA graph replays in the {args.steps} profiled steps: {replays}")
    syncs = count_syncs(engine)
    print(f"host-device syncs inside step() (torch.cuda sync debug mode), 10 steps incl. a prefill: {len(syncs)}"
          + "".join(f"\n  {m}" for m in syncs[:3]))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
