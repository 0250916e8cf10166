"""Where a step's time goes: torch.profiler over batch-1 (or --batch) decode steps of a random-weight preset, or
with --prefill over the prefill steps of requests that arrive at an idle engine one at a time.

    python packages/deploy/benchmarks/profile_decode.py [--preset internlm2-1.8b] [--batch 1] [--steps 30]
        [--trace trace.json]
    python packages/deploy/benchmarks/profile_decode.py --prefill [--prompt-len 128] [--steps 20]

Decode: milliseconds per step, whether the CUDA graph replayed, and the top operators by CPU and by CUDA time;
with --trace PATH also the kernel timeline (`kernel_timeline`: each kernel's incremental time per step, which under
programmatic dependent launch is its real share, unlike its duration).
Prefill: the wall time of the step() call that takes a new request's prompt (what the host spends launching it)
and of that step until the GPU is done, the same under torch.profiler (top operators by CPU and CUDA time), and
cProfile's top functions by own time over those step() calls.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
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


def kernel_timeline(events: list[dict], steps: int) -> list[tuple[str, float, float, float]]:
    """Per kernel name, from a Chrome trace's events: (name, calls per step, incremental us per step, duration us per
    step). Under programmatic dependent launch a kernel starts while the one before it runs, so its duration
    includes waiting; its incremental time, how much later it ends than every kernel before it ended, adds up to the
    GPU's span instead (gaps included, charged to the kernel after them). Sorted by incremental time."""
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    inc: dict[str, float] = {}
    dur: dict[str, float] = {}
    calls: dict[str, int] = {}
    end = None
    for e in kernels:
        name, stop = e["name"], e["ts"] + e["dur"]
        if end is not None:
            inc[name] = inc.get(name, 0.0) + max(0.0, stop - end)
        dur[name] = dur.get(name, 0.0) + e["dur"]
        calls[name] = calls.get(name, 0) + 1
        end = stop if end is None else max(end, stop)
    rows = [(n, calls[n] / steps, inc.get(n, 0.0) / steps, dur[n] / steps) for n in calls]
    return sorted(rows, key=lambda r: -r[2])


def profile_prefill(engine: LLMEngine, vocab_size: int, prompt_len: int, steps: int, tables: bool = True) -> int:
    """Requests of `prompt_len` random tokens (no prefix-cache hits) to an idle engine, one at a time; each prefill
    step timed alone, then the request is run to its end (2 tokens). `tables`: also profile and print where the
    host time goes."""
    gen = torch.Generator().manual_seed(0)

    def one(prof: cProfile.Profile | None = None) -> tuple[float, float]:
        prompt = torch.randint(3, vocab_size, (prompt_len,), generator=gen).tolist()
        engine.add_request(prompt, SamplingParams(max_tokens=2, ignore_eos=True, temperature=0.0))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        engine.step()
        if prof is not None:
            prof.disable()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        while engine.has_unfinished():
            engine.step()
        time.sleep(0.02)  # idle, as between a server's requests
        return t1 - t0, t2 - t0

    for _ in range(5):
        one()
    plain = [one() for _ in range(steps)]
    host, done = (statistics.median(x[i] for x in plain) * 1e3 for i in (0, 1))
    pg = engine.runner.prefill_graphs
    print(f"prefill of {prompt_len} tokens at an idle engine: step() returns after {host:.2f} ms (p50), the GPU is "
          f"done after {done:.2f} ms; piecewise graph replays so far: {pg.replays if pg else 'off'}")
    if not tables:
        return 0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            one()
    cprof = cProfile.Profile()
    for _ in range(steps):
        one(cprof)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=60))
    pstats.Stats(cprof).sort_stats("tottime").print_stats(25)
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="internlm2-1.8b")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--prefill", action="store_true", help="profile prefill steps of requests arriving one at a time")
    p.add_argument("--prompt-len", default="128", help="prefill: prompt length, or several (comma-separated)")
    p.add_argument("--no-tables", action="store_true", help="prefill: step times only, no profiler tables")
    p.add_argument("--max-prefill-graph-tokens", type=int, default=2048, help="the engine option (0: eager prefill)")
    p.add_argument("--trace", default=None, help="decode: also write the profiled steps' Chrome trace here (kernel "
                   "timeline, CUDA-graph kernels included) and print each kernel's share (`kernel_timeline`)")
    args = p.parse_args()
    cfg = ModelConfig.from_name(args.preset)
    model = random_model(cfg)
    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(synthetic_tokenizer_file(Path(d), cfg.vocab_size))
    engine = LLMEngine(EngineConfig(model=args.preset, device="cuda", max_model_len=2048, max_num_seqs=256,
                                    max_prefill_graph_tokens=args.max_prefill_graph_tokens),
                       tokenizer=tok, model=model)
    if args.prefill:
        pg = engine.runner.prefill_graphs
        if pg is not None:
            secs, extra = pg.capture_stats
            print(f"prefill graphs: {len(pg.sizes)} buckets up to {pg.sizes[-1]} tokens, "
                  f"{sum(len(g) for g, _ in pg.graphs.values())} graphs captured in {secs:.1f} s, "
                  f"{extra / 2**20:.0f} MiB more reserved")
        for n in args.prompt_len.split(","):
            profile_prefill(engine, cfg.vocab_size, int(n), args.steps, tables=not args.no_tables)
        return 0
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
    if args.trace:
        prof.export_chrome_trace(args.trace)
        with open(args.trace) as f:
            rows = kernel_timeline(json.load(f)["traceEvents"], args.steps)
        print(f"kernel timeline, per step ({sum(r[2] for r in rows):.1f} us of GPU span): name, calls, incremental us, "
              "duration us")
        for name, n, inc, d in rows[:40]:
            print(f"  {name[:60]:60s} {n:6.1f} {inc:9.1f} {d:9.1f}")
        once = [r for r in rows if r[1] < 2]  # kernels outside the layers (fewer calls per step than layers)
        print(f"  kernels called at most once a step: {sum(r[2] for r in once):.1f} us incremental, "
              f"{len(once)} names")
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
