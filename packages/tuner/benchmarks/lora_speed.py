"""LoRA SFT speed and memory: shusheng-tuner against Hugging Face transformers + peft, in one run.

    python packages/tuner/benchmarks/lora_speed.py [--preset internlm2-1.8b] [--seq 2048] [--steps 20] [--rank 16]
                                                   [--no-ac] [--out result.json]
    python packages/tuner/benchmarks/lora_speed.py --qlora-7b [--out result.json]
    python packages/tuner/benchmarks/lora_speed.py --tiny --steps 2 --out /tmp/r.json      # CPU smoke run

Both sides train the same random-weight model (the InternLM2-1.8B preset; `LlamaForCausalLM` built from the same
config) on the same rows: random documents packed to `--seq` tokens, every token trained, one row per step, LoRA
of the same rank and alpha on every linear layer of every block (ours: the fused `wqkv`, `wo`, `w1`, `w2`, `w3`;
HF: `q/k/v/o_proj`, `gate/up/down_proj`), fp32 adapters under bf16 autocast, AdamW, gradient clipping, activation
checkpointing on both (or, with --no-ac, on neither). Ours runs the tuner's own pieces: the packed rows with
per-document (varlen) attention, the model's fused chunked cross-entropy head, `lora.add_lora`. HF is a plain loop:
the packed row with per-document `position_ids` through its SDPA attention (which, without flash-attn, attends
across documents: that is the peer's behaviour, not a handicap we add), loss from `labels`.

Prints tokens/s and peak GPU memory during training (weights, optimizer state, activations; model building left out)
of each and the ratios; the target is >= 1.5x tokens/s at no more peak memory.
`--qlora-7b` measures peak GPU memory of QLoRA training (NF4 + double quantization, bf16 compute, activation
checkpointing) of the InternLM2-7B preset at `--seq` tokens; the target is <= 8 GB. `--out` writes a JSON result.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from shusheng.model import ModelConfig, build_model
from shusheng.model.parallel import apply_ac
from shusheng.model.training import build_optimizer
from shusheng.tuner.config import DEFAULT_TARGETS, LoraArgs, QuantArgs
from shusheng.tuner.data import Sample, collate, pack
from shusheng.tuner.lora import add_lora, lora_config
from shusheng.tuner.qlora import quantize_

HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def packed_rows(vocab: int, seq: int, n_rows: int, seed: int = 0) -> list:
    """Random documents (64..seq/2 tokens, all trained) packed into rows of at most `seq` tokens."""
    rng = random.Random(seed)
    units, total = [], 0
    while total < 1.25 * n_rows * seq:  # a surplus, so that the rows kept are full ones
        n = rng.randint(64, max(65, seq // 2))
        units.append((Sample([rng.randrange(3, vocab) for _ in range(n)], [True] * n),))
        total += n
    rows, report = pack(units, seq)
    return rows[:n_rows], report.efficiency


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    gc.collect()  # the previous side's model (peft and HF models hold reference cycles)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def timed(step, rows, warmup: int, steps: int, device: torch.device) -> dict:
    """Runs `warmup` untimed steps, then `steps` timed ones; tokens/s over the timed ones."""
    for i in range(warmup):
        step(rows[i % len(rows)])
    sync(device)
    tokens, t0 = 0, time.perf_counter()
    for i in range(steps):
        tokens += step(rows[(warmup + i) % len(rows)])
    sync(device)
    dt = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt}


def ours(cfg: ModelConfig, rows, args, device: torch.device, bf16: bool, qlora: bool = False) -> dict:
    reset_peak(device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    if qlora:  # built on the host, quantized block by block on its way to the GPU (as the tuner does)
        model = build_model(cfg, device="cpu", dtype=dtype, seed=0)
        quantize_(model, DEFAULT_TARGETS, QuantArgs(), dtype, device)
    else:
        model = build_model(cfg, device=device, dtype=dtype, seed=0)
    add_lora(model, lora_config(LoraArgs(rank=args.rank, alpha=2 * args.rank)), seed=0, autocast=bf16)
    if args.ac:
        apply_ac(model, "full")
    model.train()
    reset_peak(device)  # peak of training (weights, optimizer state, activations), not of building the model
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.0)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(row) -> int:
        batch = collate(row).to(device)
        with autocast(device, bf16):
            loss = model(batch.input_ids, attention=batch.attention(dtype), labels=batch.labels)
        (loss / batch.num_trained).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch.input_ids.numel()

    result = timed(step, rows, args.warmup, args.steps, device)
    result.update(peak_gb=peak_gb(device), trainable_params=sum(p.numel() for p in params))
    return result  # the model and optimizer go with this frame, before the other side is measured


def hf(cfg: ModelConfig, rows, args, device: torch.device, bf16: bool) -> dict:
    import peft
    import transformers

    reset_peak(device)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf("llama").items() if k != "architectures"})
    hf_cfg._attn_implementation = "sdpa"
    with torch.device(device):
        model = transformers.LlamaForCausalLM(hf_cfg).to(torch.bfloat16 if bf16 else torch.float32)
    if args.ac:  # transformers 5 renamed gradient_checkpointing_enable and its argument
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
    model = peft.get_peft_model(model, peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                                       target_modules=HF_TARGETS, lora_dropout=0.0))
    model.train()
    reset_peak(device)  # HF builds in fp32 and casts: leave that transient out, as for ours
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=device.type == "cuda")

    def step(row) -> int:
        batch = collate(row).to(device)
        ids = batch.input_ids
        positions = torch.cat([torch.arange(n, device=device) for n in batch.lengths])[None]
        labels = torch.cat([ids[:, :1].new_full((1, 1), -100), batch.labels[:, :-1]], dim=1)  # HF shifts itself
        with autocast(device, bf16):
            loss = model(input_ids=ids, position_ids=positions, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return ids.numel()

    result = timed(step, rows, args.warmup, args.steps, device)
    result.update(peak_gb=peak_gb(device), trainable_params=sum(p.numel() for p in params))
    return result  # the model and optimizer go with this frame, before the other side is measured


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="internlm2-1.8b")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--no-ac", dest="ac", action="store_false", help="activation checkpointing off on both sides")
    p.add_argument("--qlora-7b", action="store_true", help="peak memory of QLoRA on the internlm2-7b preset")
    p.add_argument("--tiny", action="store_true", help="the tiny preset on CPU in fp32: a smoke run of the script")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.tiny:
        device, bf16 = torch.device("cpu"), False
        cfg = ModelConfig.from_name("tiny")
        args.seq = min(args.seq, 256)
        args.warmup = min(args.warmup, 1)
    elif not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU (or --tiny for a CPU smoke run)", file=sys.stderr)
        return 2
    else:
        device, bf16 = torch.device("cuda"), True
        cfg = ModelConfig.from_name("internlm2-7b" if args.qlora_7b else args.preset)
    torch.manual_seed(0)
    rows, efficiency = packed_rows(cfg.vocab_size, args.seq, args.warmup + args.steps)
    result: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "preset": "tiny" if args.tiny else cfg_name(args), "seq": args.seq,
                    "command": " ".join(sys.argv),
                    "steps": args.steps, "rank": args.rank, "activation_checkpointing": args.ac,
                    "packing_efficiency": efficiency, "date": time.strftime("%Y-%m-%d")}
    if args.qlora_7b:
        result["qlora"] = ours(cfg, rows, args, device, bf16, qlora=True)
        peak = result["qlora"]["peak_gb"]
        result["target_met"] = None if peak is None else peak <= 8.0
        print(f"QLoRA {result['preset']} seq {args.seq}: {result['qlora']['tokens_per_s']:.0f} tokens/s, "
              f"peak {fmt(peak)} GB (target <= 8 GB)")
    else:
        result["ours"] = ours(cfg, rows, args, device, bf16)
        result["hf_peft"] = hf(cfg, rows, args, device, bf16)
        a, b = result["ours"], result["hf_peft"]
        result["speedup"] = a["tokens_per_s"] / b["tokens_per_s"]
        result["memory_ratio"] = None if a["peak_gb"] is None else a["peak_gb"] / b["peak_gb"]
        result["target_met"] = result["speedup"] >= 1.5 and (a["peak_gb"] is None or a["peak_gb"] <= b["peak_gb"])
        print(f"{'':14s} {'tokens/s':>10s} {'peak GB':>8s} {'LoRA params':>12s}")
        for name, r in (("shusheng", a), ("HF + peft", b)):
            print(f"{name:14s} {r['tokens_per_s']:10.0f} {fmt(r['peak_gb']):>8s} {r['trainable_params']:12,d}")
        print(f"speedup {result['speedup']:.2f}x (target >= 1.5x), peak memory ratio "
              f"{fmt(result['memory_ratio'])} (target <= 1)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cfg_name(args) -> str:
    return "internlm2-7b" if args.qlora_7b else args.preset


def fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


if __name__ == "__main__":
    sys.exit(main())
