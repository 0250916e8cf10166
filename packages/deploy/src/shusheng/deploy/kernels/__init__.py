"""Triton kernels of the paged-KV engine, each with a plain PyTorch reference beside it.

- `store_kv`: write new tokens' K/V into the paged cache at their slots.
- `paged_decode_attention`: one query per sequence, split-K ("flash decoding") with a reduce step.
- `paged_extend_attention`: chunked prefill / prefix-cache hits, causal, all K/V read through the block table.
- `rms_norm`, `fused_add_rms_norm`: RMSNorm, and residual add + RMSNorm in one pass.
- `qkv_rotary`: split the grouped `wqkv` output into q, k, v and apply rotary to q and k in one launch.
- `silu_mul`: SwiGLU's `silu(gate) * up` over the fused w1|w3 output.
- `linear` / `gemv`: the decode step's linear layers for 1..16 rows (a weight stream), cuBLAS above;
  `linear_silu_mul`: the w1|w3 projection with SwiGLU in the same kernel.
- `argmax`: greedy decoding's row-wise argmax over the logits, in one launch.
- `decode_inputs`: a CUDA-graph decode step's token ids (fed from the step before) and int32 context lengths.

Every module imports without triton (CPU-only torch); the `*_ref` functions then still work.
"""

from shusheng.deploy.kernels._triton import HAS_TRITON
from shusheng.deploy.kernels.argmax import argmax, argmax_ref
from shusheng.deploy.kernels.decode_attention import (
    decode_num_splits,
    paged_decode_attention,
    paged_decode_attention_ref,
)
from shusheng.deploy.kernels.decode_inputs import decode_inputs, decode_inputs_ref
from shusheng.deploy.kernels.extend_attention import paged_extend_attention, paged_extend_attention_ref
from shusheng.deploy.kernels.fused_norm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref
from shusheng.deploy.kernels.gemv import gemv, linear, linear_silu_mul
from shusheng.deploy.kernels.rotary import qkv_rotary, qkv_rotary_ref
from shusheng.deploy.kernels.store_kv import store_kv, store_kv_ref
from shusheng.deploy.kernels.swiglu import silu_mul, silu_mul_ref

__all__ = [
    "HAS_TRITON",
    "argmax",
    "argmax_ref",
    "decode_inputs",
    "decode_inputs_ref",
    "decode_num_splits",
    "fused_add_rms_norm",
    "fused_add_rms_norm_ref",
    "gemv",
    "linear",
    "linear_silu_mul",
    "paged_decode_attention",
    "paged_decode_attention_ref",
    "paged_extend_attention",
    "paged_extend_attention_ref",
    "qkv_rotary",
    "qkv_rotary_ref",
    "rms_norm",
    "rms_norm_ref",
    "silu_mul",
    "silu_mul_ref",
    "store_kv",
    "store_kv_ref",
]
