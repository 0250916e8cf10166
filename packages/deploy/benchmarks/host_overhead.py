"""The host's cost of an engine decode step per sequence, split into tensor work and Python bookkeeping (CPU).

    PYTHONPATH=packages/model/src:packages/deploy/src python packages/deploy/benchmarks/host_overhead.py \
        [--batch 256] [--steps 100] [--warmup 20] [--repeats 3] [--profile]

On a GPU with a small model the engine is host-bound: each decode step's Python (scheduling, inputs, sampling
bookkeeping, stop checks, outputs) costs about as much as the step on the device. This measures that Python on CPU,
where the device work is cheap to tell apart: a tiny random model (one layer, hidden 64, vocabulary 1000, fp32) in an
engine with `max_num_seqs=batch` runs `batch` greedy ignore_eos requests (prompts of ~100 random ids) the way the
offline pipeline does (`step(final_only=True)`). After the prefill and `--warmup` decode steps, `--steps` decode
steps are timed, `--repeats` times (every sequence runs through all of them: max_tokens leaves room), with timers
around

    runner.run      the model runner: input preparation (Python) + the forward
    forward         inside it, the decoder and the LM head (tensor work; a CUDA-graph replay on a GPU)
    sampler         the `Sampler` call (tensor work)

Printed, as one JSON line, in microseconds per sequence per step (means over the timed steps of the repeat with
the least `host_python`):

    step             wall time of step()
    run_and_sampler  runner.run + the sampler
    bookkeeping      step - run_and_sampler: the engine's own Python
    input_prep       runner.run - forward: building the step's inputs
    host_python      step - forward - sampler: every host cost but the tensor work (the number to cut)
    schedule         Scheduler.schedule (part of bookkeeping)
    complete         reading a step's samples back: stop checks, outputs (part of bookkeeping)

`--streaming` steps the way a server does (`step()`: an output of every running request every step) and
`--delta-outputs` makes those outputs deltas (`LLMEngine.delta_outputs`), and `--wire-outputs` makes them the pipe's
tuples directly (`LLMEngine.wire_outputs`), as the server's engine process does; the outbox's conversion of
each output to that tuple (`output_deltas.delta`) is timed in too, so the modes compare like for like.
`--profile` also prints (to stderr) cProfile's top engine functions over one more window.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams
from shusheng.deploy.bench import synthetic_tokenizer_file
from shusheng.deploy.output_deltas import delta
from shusheng.model import ModelConfig, build_model, load_tokenizer


class Timers:
    """Accumulated seconds per name; a call timed under a name already being timed counts only once."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self._depth: dict[str, int] = {}

    def wrap(self, name: str, fn):
        self.total[name], self._depth[name] = 0.0, 0

        def timed(*args, **kwargs):
            self._depth[name] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[name] -= 1
                if self._depth[name] == 0:
                    self.total[name] += time.perf_counter() - t0
        return timed

    def reset(self) -> None:
        self.total = dict.fromkeys(self.total, 0.0)


def instrument(engine: LLMEngine) -> Timers:
    """Timers (instance attributes) around the runner, the model forward (decoder + LM head), the sampler, the
    scheduler and the engine's read-back of a step."""
    timers = Timers()
    runner = engine.runner
    runner.run = timers.wrap("run", runner.run)
    forward = timers.wrap("forward", runner.decoder.forward)
    runner.decoder.forward = forward
    if hasattr(runner.decoder, "logits"):  # the LM head may run through the decoder or the model's output layer
        runner.decoder.logits = timers.wrap("forward", runner.decoder.logits)
    runner.model.output.forward = timers.wrap("forward", runner.model.output.forward)
    engine.sampler.forward = timers.wrap("sampler", engine.sampler.forward)
    engine.scheduler.schedule = timers.wrap("schedule", engine.scheduler.schedule)
    engine._complete = timers.wrap("complete", engine._complete)
    return timers


def build_engine(batch: int, max_tokens: int, prompt_len: int, vocab_size: int, seed: int,
                 delta_outputs: bool = False, wire_outputs: bool = False) -> LLMEngine:
    cfg = ModelConfig.from_name("tiny", vocab_size=vocab_size, num_layers=1, hidden_size=64, num_heads=4,
                                num_kv_heads=2, max_position_embeddings=2 * (prompt_len + max_tokens))
    model = build_model(cfg, dtype=torch.float32, seed=seed)
    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(synthetic_tokenizer_file(Path(d), vocab_size))
    blocks_per_seq = -(-(prompt_len + 10 + max_tokens) // 16)
    config = EngineConfig(model="tiny", device="cpu", max_num_seqs=batch, num_kv_blocks=batch * blocks_per_seq + 16,
                          seed=seed)
    engine = LLMEngine(config, tokenizer=tok, model=model)
    engine.delta_outputs, engine.wire_outputs = delta_outputs, wire_outputs  # before the requests: they read it
    rng = random.Random(seed)
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    for _ in range(batch):
        n = rng.randint(prompt_len - 10, prompt_len + 10)
        engine.add_request([rng.randrange(3, vocab_size) for _ in range(n)], params)
    return engine


def decode_window(engine: LLMEngine, timers: Timers, steps: int, batch: int, streaming: bool = False) -> dict:
    """Times `steps` decode steps of `batch` running sequences; µs per sequence per step. Delta outputs are made
    into the pipe's tuples as the engine process's outbox makes them (wire outputs already are)."""
    timers.reset()
    to_wire = engine.delta_outputs and not engine.wire_outputs
    t0 = time.perf_counter()
    for _ in range(steps):
        outs = engine.step(final_only=not streaming)
        if to_wire:
            outs = [delta(out, False) for out in outs]
        if any(out[1] if type(out) is tuple else out.finished for out in outs):
            raise RuntimeError("a request finished inside the timed window: raise max_tokens")
    wall = time.perf_counter() - t0
    t = timers.total
    per = 1e6 / (steps * batch)
    return {
        "step": wall * per,
        "run_and_sampler": (t["run"] + t["sampler"]) * per,
        "bookkeeping": (wall - t["run"] - t["sampler"]) * per,
        "input_prep": (t["run"] - t["forward"]) * per,
        "host_python": (wall - t["forward"] - t["sampler"]) * per,
        "forward": t["forward"] * per,
        "sampler": t["sampler"] * per,
        "schedule": t["schedule"] * per,
        "complete": t["complete"] * per,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=100, help="decode steps per timed window")
    p.add_argument("--warmup", type=int, default=20, help="decode steps before the first window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows (the best one is reported)")
    p.add_argument("--prompt-len", type=int, default=100)
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--profile", action="store_true", help="print cProfile's top functions over one more window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--streaming", action="store_true", help="step() as a server does: every request's output")
    p.add_argument("--delta-outputs", action="store_true", help="with --streaming: outputs as deltas")
    p.add_argument("--wire-outputs", action="store_true", help="with --delta-outputs: as the pipe's tuples")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    windows = args.repeats + (1 if args.profile else 0)
    max_tokens = args.warmup + windows * args.steps + 20  # no request finishes inside a timed window
    engine = build_engine(args.batch, max_tokens, args.prompt_len, args.vocab_size, args.seed, args.delta_outputs,
                          args.wire_outputs)
    timers = instrument(engine)
    prefill_steps = 0
    while any(s.num_computed < s.num_prompt_tokens for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step(final_only=True)
        prefill_steps += 1
    for _ in range(args.warmup):
        engine.step(final_only=True)
    if len(engine.scheduler.running) != args.batch:
        raise RuntimeError(f"{len(engine.scheduler.running)} sequences run, not {args.batch}: the KV pool is short")
    gc.collect()
    runs = [decode_window(engine, timers, args.steps, args.batch, args.streaming) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["host_python"])
    result = {"batch": args.batch, "steps": args.steps, "streaming": args.streaming,
              "delta_outputs": args.delta_outputs, "wire_outputs": args.wire_outputs,
              "repeats": args.repeats, "prefill_steps": prefill_steps,
              "us_per_seq_step": {k: round(v, 3) for k, v in best.items()},
              "host_python_all_repeats": [round(r["host_python"], 3) for r in runs]}
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        decode_window(engine, timers, args.steps, args.batch, args.streaming)
        prof.disable()
        # the engine's own functions (not the forward's: its CPU reference kernels say nothing about a GPU)
        stats = pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime")
        stats.print_stats(r"shusheng/deploy/(?!kernels/|fused_decoder|paged_attention)", 30)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
