"""What shipping a step's outputs from the engine process to the API process costs, per output (CPU).

    PYTHONPATH=packages/model/src:packages/deploy/src python packages/deploy/benchmarks/pipe_outputs.py \
        [--batch 256] [--steps 100] [--repeats 3] [--start-len 1000]

With the engine in its own process (`engine_process`), every step's outputs cross a pipe: the engine process makes
each as the pipe's tuple (`LLMEngine.wire_outputs`) and pickles the step's list; the API process unpickles it and
rebuilds each request's full output (`OutputRebuilder.rebuild`). At a few hundred streams this is work on the
engine's critical path (its host loop) and on the API process's, per output per step. This runs an engine the way
the server does (an output of every running request every step; host_overhead.py's tiny model, `--batch` greedy
requests) and times the pickling and the API side over `--steps` decode steps (host_overhead.py --wire-outputs
times the engine's step itself), heaps frozen as the server's processes freeze theirs. Prints one JSON line:
microseconds per output for each half, and the bytes per output on the pipe (the best of --repeats).
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import sys
import time

from host_overhead import build_engine  # same folder

from shusheng.deploy.output_deltas import OutputRebuilder


def window(engine, rebuilder: OutputRebuilder, steps: int) -> dict:
    send = receive = 0.0
    n = size = 0
    for _ in range(steps):
        outs = engine.step()
        t0 = time.perf_counter()
        data = pickle.dumps(("outputs", outs, engine.stats()), protocol=pickle.HIGHEST_PROTOCOL)
        t1 = time.perf_counter()
        rebuilt = [rebuilder.rebuild(d) for d in pickle.loads(data)[1]]
        t2 = time.perf_counter()
        assert all(r is not None for r in rebuilt)
        send, receive, n, size = send + t1 - t0, receive + t2 - t1, n + len(outs), size + len(data)
    return {"engine_side_us": send / n * 1e6, "api_side_us": receive / n * 1e6, "bytes": size / n}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--start-len", type=int, default=0,
                   help="untimed decode steps first, so the timed outputs are this many tokens long (long streams)")
    args = p.parse_args()
    if args.batch < 1 or args.steps < 1 or args.repeats < 1:
        print("error: --batch, --steps and --repeats must be at least 1", file=sys.stderr)
        return 2
    if args.start_len < 0:
        print("error: --start-len must be >= 0", file=sys.stderr)
        return 2
    max_tokens = 20 + args.start_len + args.steps * args.repeats + 10
    # the engine process's modes; its requests are queued already
    engine = build_engine(args.batch, max_tokens, 100, 1000, seed=0, delta_outputs=True, wire_outputs=True)
    rebuilder = OutputRebuilder()
    for seq in engine.scheduler.waiting:
        rebuilder.add(seq.request_id, None, seq.token_ids[: seq.num_prompt_tokens])
    window(engine, rebuilder, 20 + args.start_len)  # prefill, warm-up and --start-len
    gc.collect()
    gc.freeze()
    runs = [window(engine, rebuilder, args.steps) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["engine_side_us"] + r["api_side_us"])
    print(json.dumps({"batch": args.batch, "steps": args.steps, "start_len": args.start_len,
                      **{k: round(v, 3) for k, v in best.items()},
                      "all": runs}))
    gc.unfreeze()
    return 0


if __name__ == "__main__":
    sys.exit(main())
