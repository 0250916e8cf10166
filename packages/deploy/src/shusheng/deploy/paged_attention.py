"""The paged-KV attention backend the engine plugs into `shusheng.model`'s decoder.

The model's attention layer hands over q (1, N, H, D) and the new k, v (1, N, KV, D) of all N tokens of a step,
flattened over sequences. This backend stores k, v into the layer's paged cache by slot mapping, then attends each
query to its sequence's cached context through the block table: the paged decode kernel when every sequence adds
one token, the extend kernel otherwise (chunked prefill, prefix-cache hits, decodes mixed with prefills).
`TritonOps` runs the kernels of `kernels/` on a GPU; `TorchOps` runs their PyTorch references anywhere (CPU). The
same two op sets serve `FusedDecoder`'s norm, rotary and SwiGLU kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from shusheng.model.attention import AttentionBackend

from . import kernels


class TorchOps:
    """The kernels' PyTorch references (any device)."""

    store_kv = staticmethod(kernels.store_kv_ref)
    decode = staticmethod(kernels.paged_decode_attention_ref)
    extend = staticmethod(kernels.paged_extend_attention_ref)
    rms_norm = staticmethod(kernels.rms_norm_ref)
    fused_add_rms_norm = staticmethod(kernels.fused_add_rms_norm_ref)
    qkv_rotary = staticmethod(kernels.qkv_rotary_ref)
    silu_mul = staticmethod(kernels.silu_mul_ref)
    linear = staticmethod(F.linear)

    @staticmethod
    def linear_silu_mul(x: Tensor, w13: Tensor) -> Tensor:
        return kernels.silu_mul_ref(F.linear(x, w13))


class TritonOps:
    """The Triton kernels (CUDA, or Triton's interpreter)."""

    store_kv = staticmethod(kernels.store_kv)
    decode = staticmethod(kernels.paged_decode_attention)
    extend = staticmethod(kernels.paged_extend_attention)
    rms_norm = staticmethod(kernels.rms_norm)
    fused_add_rms_norm = staticmethod(kernels.fused_add_rms_norm)
    qkv_rotary = staticmethod(kernels.qkv_rotary)
    silu_mul = staticmethod(kernels.silu_mul)
    linear = staticmethod(kernels.linear)
    linear_silu_mul = staticmethod(kernels.linear_silu_mul)


@dataclass
class AttentionMetadata:
    """Per-step layout of the flattened batch (all int32 tensors on the cache's device)."""

    slot_mapping: Tensor  # (N,) cache slot of each new token; -1 skips (CUDA-graph padding)
    block_tables: Tensor  # (B, max_blocks)
    context_lens: Tensor  # (B,) cached tokens after this step's, per sequence
    cu_seqlens_q: Tensor  # (B + 1,) new tokens per sequence, cumulative
    max_q_len: int
    max_context_len: int
    decode_only: bool  # every sequence adds exactly one token
    num_splits: int | None = None  # decode split-K partitions (None: chosen by the kernel)


class PagedAttention(AttentionBackend):
    def __init__(self, k_caches: list[Tensor], v_caches: list[Tensor], ops=TorchOps):
        super().__init__()
        self.k_caches, self.v_caches = k_caches, v_caches
        self.ops = ops
        self.meta: AttentionMetadata | None = None

    def forward(self, q: Tensor, k: Tensor, v: Tensor, layer: int) -> Tensor:
        _, N, H, D = q.shape
        k, v = k.view(N, -1, D), v.view(N, -1, D)
        kc, vc, slots = self.cache_for(layer)
        self.ops.store_kv(k, v, kc, vc, slots)
        return self.attend(q.view(N, H, D), layer).view(1, N, H, D)

    def cache_for(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        """(k_cache, v_cache, slot_mapping) of `layer` this step: where a caller that writes the new K/V itself
        (`qkv_rotary(cache=...)`) puts them before calling `attend`."""
        return self.k_caches[layer], self.v_caches[layer], self.meta.slot_mapping

    def attend(self, q: Tensor, layer: int, out: Tensor | None = None) -> Tensor:
        """(N, H, D) queries -> (N, H, D) attention outputs over the cache (into `out` when given), this step's
        K/V already stored."""
        m = self.meta
        kc, vc = self.k_caches[layer], self.v_caches[layer]
        scale = q.shape[-1] ** -0.5
        if m.decode_only:
            return self.ops.decode(q, kc, vc, m.block_tables, m.context_lens, scale, num_splits=m.num_splits,
                                   out=out, max_context_len=m.max_context_len)
        return self.ops.extend(q, kc, vc, m.block_tables, m.cu_seqlens_q, m.context_lens, m.max_q_len, scale,
                               out=out)


def ops_for(device: torch.device):
    return TritonOps if device.type == "cuda" else TorchOps
