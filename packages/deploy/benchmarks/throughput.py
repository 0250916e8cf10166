"""Offline throughput and batch-1 decode latency of the engine vs HF transformers `generate` and the roofline.

Run on one GPU:
    python packages/deploy/benchmarks/throughput.py [--presets internlm2-1.8b,internlm2-7b] [--json out.json]

Per preset (random bf16 weights): HF `LlamaForCausalLM.generate` (same weights) at each of --hf-batch-sizes on the
workload's first prompts with --hf-output-len new tokens (its rate per output token barely depends on the output
length, and full 1024-token runs would take minutes); then the engine on the nano-vllm-style workload (256 requests,
input and output lengths uniform in 100..1024, ignore_eos) and a batch-1 decode; then the measured ceilings (copy
bandwidth, bf16 GEMM) and the roofline of that workload (`shusheng.deploy.bench.roofline`). Prints ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams
from shusheng.deploy.bench import Workload, measure_ceilings, roofline, run_offline, synthetic_tokenizer_file
from shusheng.model import ModelConfig, Transformer, load_tokenizer
from shusheng.model.checkpoint import to_hf_state_dict


def random_model(cfg: ModelConfig) -> Transformer:
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device="cuda").to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0, 0.02)
    return model.eval()


def hf_generate(model: Transformer, cfg: ModelConfig, requests, batch_sizes, new_tokens) -> dict:
    import transformers

    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf("llama").items() if k != "architectures"})
    with torch.device("cuda"):
        hf = transformers.LlamaForCausalLM(hf_cfg).to(torch.bfloat16).eval()
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), cfg, "llama"))
    rows = {}
    for bs in batch_sizes:
        prompts = [p for p, _ in requests[:bs]]
        width = max(len(p) for p in prompts)
        ids = torch.zeros(bs, width, dtype=torch.long, device="cuda")
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        try:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            rows[bs] = {"seconds": dt, "output_tokens_per_s": bs * new_tokens / dt}
        except torch.OutOfMemoryError:
            rows[bs] = {"error": "out of memory"}
        torch.cuda.empty_cache()
        print(f"  HF generate bs={bs}: {rows[bs]}", flush=True)
    hf.to("meta")
    torch.cuda.empty_cache()
    best = max((r["output_tokens_per_s"], bs) for bs, r in rows.items() if "error" not in r)
    return {"by_batch_size": rows, "best_output_tokens_per_s": best[0], "best_batch_size": best[1]}


def decode_step_time(engine: LLMEngine, batch: int = 1, prompt_len: int = 128, new_tokens: int = 256,
                     warmup: bool = True) -> float:
    """Seconds per decode step of `batch` requests decoding together: (T(new_tokens) - T(new_tokens / 2)) /
    (new_tokens / 2), with T(n) the wall time of the whole batch making n tokens each, so the prefill and any start
    or drain cost of the step pipeline cancel out. `warmup`: one untimed run first (every context length and kernel
    configuration of the measured runs)."""
    prompts = [list(range(3 + i, 3 + i + prompt_len)) for i in range(batch)]

    def whole(n: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.generate(prompts, SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0))
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    if warmup:
        whole(new_tokens)
    half = new_tokens // 2
    return min(whole(new_tokens) - whole(half) for _ in range(2)) / (new_tokens - half)


def batch1_latency(engine: LLMEngine, prompt_len: int = 128, new_tokens: int = 256) -> float:
    """Seconds per output token of one request in decode (`decode_step_time` at batch 1)."""
    return decode_step_time(engine, 1, prompt_len, new_tokens)


def bench_preset(name: str, args) -> dict:
    cfg = ModelConfig.from_name(name)
    model = random_model(cfg)
    requests = Workload(args.num_requests, (100, 1024), (100, 1024), seed=0).sample(cfg.vocab_size)
    print(f"== {name}: {cfg.num_params / 1e9:.2f} B parameters", flush=True)
    hf = hf_generate(model, cfg, requests, args.hf_batch_sizes, args.hf_output_len)
    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(synthetic_tokenizer_file(Path(d), cfg.vocab_size))
    t0 = time.perf_counter()
    engine = LLMEngine(EngineConfig(model=name, device="cuda", max_model_len=2048, max_num_seqs=256,
                                    gpu_memory_utilization=0.9), tokenizer=tok, model=model)
    startup = time.perf_counter() - t0
    run_offline(engine, requests[:8])  # warm-up (Triton autotuning, allocator)
    engine.scheduler.num_preemptions = 0
    offline = run_offline(engine, requests)
    latency = batch1_latency(engine)
    ceilings = measure_ceilings()
    roof = roofline(cfg, requests, ceilings, max_num_seqs=256)
    res = {
        "preset": name, "params": cfg.num_params, "kv_blocks": engine.runner.num_blocks, "startup_s": startup,
        "offline": offline, "batch1_s_per_token": latency, "ceilings": ceilings, "roofline": roof, "hf": hf,
        "vs_roofline": offline["output_tokens_per_s"] / roof["output_tokens_per_s_roofline"],
        "vs_hf": offline["output_tokens_per_s"] / hf["best_output_tokens_per_s"],
        "batch1_vs_floor": latency * 1e3 / roof["batch1_decode_floor_ms"],
    }
    print(f"  engine: {offline['output_tokens_per_s']:.0f} output tok/s, {offline['requests_per_s']:.2f} req/s, "
          f"{offline['seconds']:.1f} s, {offline['preemptions']} preemptions, {engine.runner.num_blocks} KV blocks, "
          f"startup {startup:.1f} s; host waited for the GPU {offline['gpu_wait_share']:.0%} of the time")
    print(f"  roofline {roof['output_tokens_per_s_roofline']:.0f} tok/s (prefill {roof['prefill_floor_s']:.2f} s + "
          f"decode {roof['decode_floor_s']:.2f} s) -> engine at {res['vs_roofline']:.0%}; "
          f"HF best {hf['best_output_tokens_per_s']:.0f} tok/s (bs {hf['best_batch_size']}) -> {res['vs_hf']:.1f}x")
    print(f"  batch-1 decode {latency * 1e3:.2f} ms/token vs floor {roof['batch1_decode_floor_ms']:.2f} ms "
          f"({res['batch1_vs_floor']:.2f}x); copy {ceilings['bandwidth'] / 1e12:.2f} TB/s, "
          f"GEMM {ceilings['gemm_flops'] / 1e12:.0f} TFLOP/s", flush=True)
    del engine, model
    torch.cuda.empty_cache()
    return res


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="internlm2-1.8b,internlm2-7b")
    p.add_argument("--num-requests", type=int, default=256)
    p.add_argument("--hf-batch-sizes", default="64,128")
    p.add_argument("--hf-output-len", type=int, default=64)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.hf_batch_sizes = [int(x) for x in args.hf_batch_sizes.split(",")]
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "presets": []}
    for name in args.presets.split(","):
        results["presets"].append(bench_preset(name, args))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
