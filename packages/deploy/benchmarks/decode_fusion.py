"""Decode latency with and without the decode path's fusions (norm, SwiGLU, residual add inside the skinny GEMMs).

    python packages/deploy/benchmarks/decode_fusion.py [--presets internlm2-1.8b,internlm2-7b] [--batches 1,4,16]
        [--rounds 2] [--json F]

One engine per preset (random bf16 weights). Its CUDA graphs are captured again for each arm: `FusedLayer.decode`
(seven kernels a layer: the fused path) and the prefill path's layer (ten: one fused add + norm kernel, one SwiGLU
kernel, plain GEMMs), by setting `fused_decoder.FUSED_ROWS` to 16 or 0. Arms alternate for --rounds rounds, each
measured like throughput.py's batch-1 figure (a whole request of 256 new tokens minus one of 128, per token; B
requests at once for batch B). Prints ms per decode step for each arm, their ratio, and the batch-1 figure against
the weight-bandwidth floor (weights / measured copy bandwidth). Also prints how many greedy tokens the two arms
share: bf16 rounding differs between them, so with random weights the sequences may part after a while.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from throughput import random_model  # same folder

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams, fused_decoder
from shusheng.deploy.bench import measure_ceilings, roofline, synthetic_tokenizer_file
from shusheng.model import ModelConfig, load_tokenizer


def step_seconds(engine: LLMEngine, batch: int, prompt_len: int = 128, new_tokens: int = 256) -> tuple[float, list]:
    """Seconds per decode step of `batch` requests, (T(new) - T(new / 2)) / (new / 2), and the first request's
    tokens."""
    prompts = [list(range(3 + i, 3 + i + prompt_len)) for i in range(batch)]

    def whole(n: int):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = engine.generate(prompts, SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0))
        torch.cuda.synchronize()
        return time.perf_counter() - t0, out[0].outputs[0].token_ids

    _, tokens = whole(new_tokens)  # warm-up
    half = new_tokens // 2
    return min(whole(new_tokens)[0] - whole(half)[0] for _ in range(2)) / (new_tokens - half), tokens


def bench_preset(name: str, batches: list[int], rounds: int, bandwidth: float) -> dict:
    cfg = ModelConfig.from_name(name)
    model = random_model(cfg)
    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(synthetic_tokenizer_file(Path(d), cfg.vocab_size))
    engine = LLMEngine(EngineConfig(model=name, device="cuda", max_model_len=1024, max_num_seqs=max(batches),
                                    gpu_memory_utilization=0.5), tokenizer=tok, model=model)
    floor_ms = roofline(cfg, [([0], 2)], {"bandwidth": bandwidth, "gemm_flops": 1e15}, 1)["batch1_decode_floor_ms"]
    times: dict[str, dict[int, list[float]]] = {"fused": {b: [] for b in batches}, "unfused": {b: [] for b in batches}}
    tokens = {}
    for _ in range(rounds):
        for arm, rows in (("fused", 16), ("unfused", 0)):
            fused_decoder.FUSED_ROWS = rows
            engine.runner._capture_graphs()
            for b in batches:
                t, tokens[arm] = step_seconds(engine, b)
                times[arm][b].append(t)
    fused_decoder.FUSED_ROWS = 16
    same = next((i for i, (a, b) in enumerate(zip(tokens["fused"], tokens["unfused"], strict=True)) if a != b),
                len(tokens["fused"]))
    res = {"preset": name, "floor_ms": floor_ms, "same_greedy_prefix": same, "of_tokens": len(tokens["fused"]),
           "by_batch": {}}
    for b in batches:
        f, u = min(times["fused"][b]), min(times["unfused"][b])
        res["by_batch"][b] = {"fused_ms": f * 1e3, "unfused_ms": u * 1e3, "unfused_over_fused": u / f,
                              "all_fused_ms": [t * 1e3 for t in times["fused"][b]],
                              "all_unfused_ms": [t * 1e3 for t in times["unfused"][b]]}
        extra = f"; vs floor {floor_ms:.2f} ms: fused {f * 1e3 / floor_ms:.2f}x, unfused {u * 1e3 / floor_ms:.2f}x" \
            if b == 1 else ""
        print(f"{name} batch {b:2d}: fused {f * 1e3:.3f} ms/step, unfused {u * 1e3:.3f} -> {u / f:.3f}x{extra}",
              flush=True)
    print(f"{name}: greedy tokens equal for the first {same} of {len(tokens['fused'])}", flush=True)
    del engine, model
    torch.cuda.empty_cache()
    return res


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="internlm2-1.8b,internlm2-7b")
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    bw = measure_ceilings()["bandwidth"]
    out = {"device": torch.cuda.get_device_name(), "copy_bandwidth": bw, "presets": []}
    print(f"{out['device']}: copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    for name in args.presets.split(","):
        out["presets"].append(bench_preset(name, [int(b) for b in args.batches.split(",")], args.rounds, bw))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
