"""Forward throughput of the InternLM2-1.8B preset at seq 4096 with each attention backend, against HF transformers.

Run on a GPU:  python packages/model/benchmarks/forward_throughput.py [--seq 4096] [--batch 1] [--json out.json]

Prints, for each backend: forward tokens/s (no grad) and forward+backward tokens/s, with the ratio to
`transformers.LlamaForCausalLM` (same shapes, same random bf16 weights, its default SDPA attention) measured in the
same run. Also checks bf16 logits against an fp32 reference (relative error of the logits).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from shusheng.model import ModelConfig, build_model, cu_seqlens_from_lengths, varlen_attention
from shusheng.model import attention as attn_mod
from shusheng.model.attention import SDPAAttention, available_varlen_impls
from shusheng.model.checkpoint import to_hf_state_dict
from shusheng.model.parallel import apply_compile


def bench(fn, warmup=3, iters=10) -> float:
    """Median milliseconds of fn() over `iters` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def hf_model(model, cfg: ModelConfig):
    import transformers

    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf("llama").items() if k != "architectures"})
    hf_cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):
        ref = transformers.LlamaForCausalLM(hf_cfg).to(torch.bfloat16)
    ref.load_state_dict(to_hf_state_dict(model.state_dict(), cfg, "llama"))
    return ref.eval()


def time_hf(model, cfg, ids, train_step) -> tuple[float, float]:
    ref = hf_model(model, cfg)
    with torch.no_grad():
        fwd = bench(lambda: ref(ids))
    train = bench(lambda: train_step(ref), iters=5)
    ref.to("meta")  # free its memory before ours is measured
    torch.cuda.empty_cache()
    return fwd, train


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="internlm2-1.8b")
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--docs", type=int, default=8, help="documents per row for the packed (varlen) rows")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(args.preset)
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16)
    B, T = args.batch, args.seq
    ids = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": args.preset,
                     "params": cfg.num_params, "batch": B, "seq": T, "rows": []}

    # bf16 vs an fp32 run of the same (bf16-valued) weights, on a shorter input; HF's bf16 error for scale
    short = ids[:, :512]
    with torch.no_grad():
        lo = model(short).float()
        model32 = build_model(cfg, device="cuda", dtype=torch.float32)
        model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        ref = model32(short)
        del model32
        hf = hf_model(model, cfg)
        lo_hf = hf(short).logits.float()
        hf.to("meta")
    rel = ((lo - ref).norm() / ref.norm()).item()
    rel_hf = ((lo_hf - ref).norm() / ref.norm()).item()
    agree = (lo.argmax(-1) == ref.argmax(-1)).float().mean().item()
    results.update(bf16_vs_fp32_rel_err=rel, hf_bf16_vs_fp32_rel_err=rel_hf, bf16_vs_fp32_argmax_agreement=agree)
    print(f"bf16 vs fp32 logits: relative error ours {rel:.2e}, HF {rel_hf:.2e}; argmax agreement {agree:.3f}")
    torch.cuda.empty_cache()

    doc_lens = [T // args.docs] * args.docs
    doc_lens[-1] += T - sum(doc_lens)
    cu_docs = cu_seqlens_from_lengths(doc_lens * B, "cuda")
    cu_one = cu_seqlens_from_lengths([T] * B, "cuda")
    backends = {"sdpa (dense causal)": lambda: SDPAAttention()}
    for impl in available_varlen_impls("cuda", torch.bfloat16):
        if impl == "sdpa_loop":
            continue
        backends[f"varlen/{impl}, 1 doc"] = lambda impl=impl: varlen_attention(cu_one, impl=impl)
        backends[f"varlen/{impl}, {args.docs} docs"] = lambda impl=impl: varlen_attention(cu_docs, impl=impl)
    backends[f"varlen/sdpa_loop, {args.docs} docs"] = lambda: varlen_attention(cu_docs, impl="sdpa_loop")

    def fwd(m, a=None):
        with torch.no_grad():
            m(ids, attention=a) if a is not None else m(ids)

    def train_step(m, a=None):
        out = m(ids, attention=a) if a is not None else m(ids)
        logits = out if isinstance(out, torch.Tensor) else out.logits
        logits.float().logsumexp(-1).mean().backward()

    hf_fwd, hf_train = time_hf(model, cfg, ids, train_step)
    ntok = B * T
    print(f"{'backend':34s} {'fwd tok/s':>12s} {'vs HF':>7s} {'fwd+bwd tok/s':>14s} {'vs HF':>7s} {'peak GB':>8s}")
    print(f"{'HF LlamaForCausalLM (sdpa)':34s} {ntok / hf_fwd * 1e3:12.0f} {1.0:7.2f} "
          f"{ntok / hf_train * 1e3:14.0f} {1.0:7.2f}")
    results["hf_llama"] = {"fwd_ms": hf_fwd, "train_ms": hf_train}

    variants = list(backends.items())
    # the dense path with K/V expanded to all heads, to see whether SDPA's GQA flag costs a slower kernel
    orig = attn_mod.sdpa

    def expanded(q, k, v, **kw):
        g = q.shape[1] // k.shape[1]
        return orig(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), **kw)

    def measure(name, a):
        try:
            f = bench(lambda: fwd(model, a))
            torch.cuda.reset_peak_memory_stats()
            t = bench(lambda: train_step(model, a), iters=5)
        except Exception as e:  # report, keep measuring the others
            print(f"{name:34s} failed: {type(e).__name__}: {str(e)[:200]}")
            results["rows"].append({"backend": name, "error": str(e)[:500]})
            return
        finally:
            model.zero_grad(set_to_none=True)
        row = {"backend": name, "fwd_ms": f, "train_ms": t, "fwd_tok_s": ntok / f * 1e3, "train_tok_s": ntok / t * 1e3,
               "fwd_vs_hf": hf_fwd / f, "train_vs_hf": hf_train / t,
               "train_peak_gb": torch.cuda.max_memory_allocated() / 1e9}
        results["rows"].append(row)
        print(f"{name:34s} {row['fwd_tok_s']:12.0f} {row['fwd_vs_hf']:7.2f} {row['train_tok_s']:14.0f} "
              f"{row['train_vs_hf']:7.2f} {row['train_peak_gb']:8.1f}")

    for name, make in variants:
        measure(name, make())
    attn_mod.sdpa = expanded
    measure("sdpa (dense, K/V expanded)", SDPAAttention())
    attn_mod.sdpa = orig
    # torch.compile per block (what evo and tuner run): fused norms, rope and SwiGLU around the same attention
    apply_compile(model)
    measure("sdpa (dense causal) + compile", SDPAAttention())
    if "torch_varlen" in available_varlen_impls("cuda", torch.bfloat16):
        measure(f"varlen/torch_varlen, {args.docs} docs + compile", varlen_attention(cu_docs, impl="torch_varlen"))
    results["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
