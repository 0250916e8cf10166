"""Offline throughput on a synthetic workload, and the roofline it is judged against.

The workload follows nano-vllm's benchmark: N requests with random prompt ids, input and output lengths uniform in
given ranges, ignore_eos so every request produces exactly its output length. The roofline uses two measured
ceilings of the card (device-to-device copy bandwidth and a large bf16 GEMM rate): a decode step cannot beat
(weight bytes + KV bytes read) / bandwidth nor its FLOPs / GEMM rate; prefill cannot beat its FLOPs / GEMM rate.
Steps are simulated with the engine's own limits (at most `max_num_seqs` sequences at once, FCFS refill).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from shusheng.model import ModelConfig

from .llm_engine import LLMEngine
from .sampling_params import SamplingParams


@dataclass
class Workload:
    num_requests: int = 256
    input_len: tuple[int, int] = (100, 1024)
    output_len: tuple[int, int] = (100, 1024)
    seed: int = 0

    def sample(self, vocab_size: int) -> list[tuple[list[int], int]]:
        """(prompt ids, output length) per request, reproducible from the seed."""
        rng = random.Random(self.seed)
        out = []
        for _ in range(self.num_requests):
            n_in, n_out = rng.randint(*self.input_len), rng.randint(*self.output_len)
            out.append(([rng.randrange(3, vocab_size) for _ in range(n_in)], n_out))
        return out


def parse_range(text: str) -> tuple[int, int]:
    """'100:1024' -> (100, 1024); '512' -> (512, 512)."""
    lo, _, hi = text.partition(":")
    try:
        r = (int(lo), int(hi or lo))
    except ValueError:
        raise ValueError(f"length range {text!r} is not LO:HI or N (e.g. 100:1024)") from None
    if not 1 <= r[0] <= r[1]:
        raise ValueError(f"length range {text!r} needs 1 <= LO <= HI")
    return r


def run_offline(engine: LLMEngine, requests: list[tuple[list[int], int]]) -> dict:
    """Run every request to completion; time it end to end."""
    if engine.runner.device.type == "cuda":
        torch.cuda.synchronize()
    t0, wait0 = time.perf_counter(), engine.gpu_wait_s
    for prompt, n_out in requests:
        engine.add_request(prompt, SamplingParams(max_tokens=n_out, ignore_eos=True, temperature=0.0))
    produced = 0
    while engine.has_unfinished():
        for out in engine.step(final_only=True):
            produced += len(out.outputs[0].token_ids)
    if engine.runner.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "requests": len(requests), "requests_per_s": len(requests) / dt,
            "output_tokens": produced, "output_tokens_per_s": produced / dt,
            "input_tokens": sum(len(p) for p, _ in requests), "preemptions": engine.scheduler.num_preemptions,
            # share of the time the host sat waiting for the device: near 0 means the host was the bottleneck
            "gpu_wait_share": (engine.gpu_wait_s - wait0) / dt}


def measure_ceilings(device: torch.device | str = "cuda") -> dict:
    """Copy bandwidth (bytes read + written per second) and bf16 GEMM rate (FLOP/s) of the card, measured."""
    from triton.testing import do_bench

    src = torch.empty(2**30 // 2, dtype=torch.bfloat16, device=device)  # 1 GiB, random below
    src.normal_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    bandwidth = 2 * src.numel() * src.element_size() / (ms * 1e-3)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    ms = do_bench(lambda: a @ b, return_mode="median")
    return {"bandwidth": bandwidth, "gemm_flops": 2 * 8192**3 / (ms * 1e-3)}


def roofline(cfg: ModelConfig, requests: list[tuple[list[int], int]], ceilings: dict, max_num_seqs: int,
             dtype_bytes: int = 2, num_devices: int = 1) -> dict:
    """Lower bounds on the time of the offline workload and of a batch-1 decode step on this card (on
    `num_devices` such cards under tensor parallelism: their bandwidths and GEMM rates add up, communication free)."""
    L, D, V = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    H, KV, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    linear = cfg.num_params - V * D * (1 if cfg.tie_word_embeddings else 2) - D  # per-token matmul weights
    head = V * D
    weight_bytes = (linear + head) * dtype_bytes  # the embedding table is gathered, not streamed
    kv_per_token = 2 * L * KV * Dh * dtype_bytes
    attn_flops_per_pair = 4 * L * H * Dh  # QK^T and PV, per (query, key) pair
    bw, gemm = ceilings["bandwidth"] * num_devices, ceilings["gemm_flops"] * num_devices

    prefill_flops = 0.0
    for prompt, _ in requests:
        n = len(prompt)
        prefill_flops += 2 * linear * n + 2 * head + attn_flops_per_pair * n * (n + 1) / 2
    prefill_s = prefill_flops / gemm

    # decode steps with at most max_num_seqs sequences at once, refilled first come first served
    pending = [(len(p), n_out) for p, n_out in requests]
    active: list[list[int]] = []  # [context length, tokens left]
    decode_s = 0.0
    steps = 0
    while pending or active:
        while pending and len(active) < max_num_seqs:
            n_in, n_out = pending.pop(0)
            active.append([n_in + 1, n_out - 1])  # the first output token comes from the prefill
        B = sum(1 for a in active if a[1] > 0)
        if B:
            ctx = sum(a[0] for a in active if a[1] > 0)
            mem = (weight_bytes + ctx * kv_per_token) / bw
            comp = (2 * (linear + head) * B + attn_flops_per_pair * ctx) / gemm
            decode_s += max(mem, comp)
            steps += 1
        for a in active:
            if a[1] > 0:
                a[0] += 1
                a[1] -= 1
        active = [a for a in active if a[1] > 0]
    total_out = sum(n for _, n in requests)
    floor = prefill_s + decode_s
    return {
        "weight_bytes": weight_bytes, "kv_bytes_per_token": kv_per_token,
        "prefill_floor_s": prefill_s, "decode_floor_s": decode_s, "decode_steps": steps, "floor_s": floor,
        "output_tokens_per_s_roofline": total_out / floor,
        "batch1_decode_floor_ms": weight_bytes / bw * 1e3,
    }


def save_random_checkpoint(folder: Path, cfg: ModelConfig, tokenizer, std: float, fmt: str = "internlm2") -> Path:
    """A random-weight checkpoint of `cfg` with `tokenizer` in `folder` (for tests and benchmarks): every weight but
    the norms drawn from N(0, std), each from its own seed, so greedy argmax has clear margins at a large std."""
    from shusheng.model import build_model, save_pretrained

    model = build_model(cfg, seed=0)
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if not name.endswith("norm.weight"):
                p.normal_(0, std, generator=torch.Generator().manual_seed(i))
    save_pretrained(model, folder, format=fmt, tokenizer=tokenizer)
    return folder


def synthetic_tokenizer_file(folder: Path, vocab_size: int) -> Path:
    """A word-level tokenizer.json covering `vocab_size` ids ("t0", "t1", ...) for random-weight benchmarks."""
    vocab = {"<s>": 1, "</s>": 2, "<unk>": 0} | {f"t{i}": i for i in range(3, vocab_size)}
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "normalizer": None, "post_processor": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t, i in (("<unk>", 0), ("<s>", 1), ("</s>", 2))],
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return folder
