"""The serving forward pass: the model's own weights, run through fused kernels.

`shusheng.model.Transformer` is written for reading and training: each RMSNorm, rotary embedding, residual add and
SwiGLU is a handful of small PyTorch ops. In a decode step those dozens of tiny kernels per layer cost as much as the
weight-streaming GEMMs. `FusedDecoder` is a module swap over the same parameters: per layer one fused
residual-add + RMSNorm, one kernel that splits the grouped `wqkv` output, applies rotary to q and k and (with the
paged cache) stores k and v into it, one GEMM for w1 and w3 together (their weights concatenated once, the originals
released) with the silu-multiply in its epilogue in decode steps (a kernel of its own after cuBLAS otherwise), and the
linear layers through `ops.linear` (a skinny-GEMM kernel
for decode steps of a few rows).
With `TorchOps` it runs the kernels' PyTorch references (CPU), computing exactly what the model computes.

Under tensor parallelism (`tp_group`, weights cut by `shusheng.model.parallel.shard_tp_local`) each rank holds whole
KV-head groups and a slice of the MLP and of the vocabulary: the outputs of the row-parallel `wo` and `w2` are
all-reduced (plain torch.distributed calls, so NCCL's are captured in CUDA graphs) and the logits all-gathered.

Tokens are flattened over the batch: input (N,) ids and positions, output (N, hidden).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from shusheng.model import Transformer
from shusheng.model.attention import AttentionBackend

# torch >= 2.13 renamed all_gather_into_tensor (the old name warns)
_all_gather_into_tensor = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)


class FusedLayer(nn.Module):
    def __init__(self, block: nn.Module, tp_group: dist.ProcessGroup | None = None):
        super().__init__()
        self.tp_group = tp_group
        attn, ffn = block.attention, block.feed_forward
        self.layer = attn.layer
        self.group, self.head_dim = attn.group, attn.head_dim
        self.wqkv, self.wo, self.w2 = attn.wqkv, attn.wo, ffn.w2
        self.attention_norm, self.ffn_norm = block.attention_norm, block.ffn_norm
        w1, w3 = ffn.w1, ffn.w3
        self.w13 = nn.Linear(w1.in_features, 2 * w1.out_features, bias=False, device=w1.weight.device,
                             dtype=w1.weight.dtype)
        with torch.no_grad():
            self.w13.weight.copy_(torch.cat([w1.weight, w3.weight]))
        # the block now shares its norms and projections with this layer; drop its separate w1/w3 copies
        del ffn.w1, ffn.w3

    def forward(self, normed: Tensor, residual: Tensor, positions: Tensor, inv_freq: Tensor,
                attention: AttentionBackend, next_norm: nn.Module, ops) -> tuple[Tensor, Tensor]:
        """normed = this layer's attention_norm(residual) -> (next_norm(new residual), new residual)."""
        if hasattr(attention, "cache_for"):  # the paged cache: the rotary kernel also stores the new K/V into it
            q = self.queries(normed, positions, inv_freq, ops, attention.cache_for(self.layer))
            a = attention.attend(q, self.layer)  # (N, H, D)
        else:
            q, k, v = ops.qkv_rotary(self._qkv(normed, ops), positions, inv_freq, *self.heads(), self.head_dim)
            a = attention(q[None], k[None], v[None], self.layer)[0]
        return self.after_attention(a, residual, next_norm, ops)

    def queries(self, normed: Tensor, positions: Tensor, inv_freq: Tensor, ops,
                cache: tuple[Tensor, Tensor, Tensor], out: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The attention's first half: normed -> (N, H, D) rotated queries, the rotated keys and the values
        stored into the paged `cache` (k_cache, v_cache, slot_mapping); `out`: static (q, k) buffers to write."""
        qkv = self._qkv(normed, ops)
        return ops.qkv_rotary(qkv, positions, inv_freq, *self.heads(), self.head_dim, out=out, cache=cache)[0]

    def after_attention(self, a: Tensor, residual: Tensor, next_norm: nn.Module, ops) -> tuple[Tensor, Tensor]:
        """The rest of the layer: (N, H, D) attention output -> (next_norm(new residual), new residual)."""
        a = ops.linear(a.reshape(a.shape[0], -1), self.wo.weight, self.wo.bias)
        if self.tp_group is not None:
            dist.all_reduce(a, group=self.tp_group)
        normed, residual = ops.fused_add_rms_norm(a, residual, self.ffn_norm.weight, self.ffn_norm.eps)
        f = ops.linear(ops.linear_silu_mul(normed, self.w13.weight), self.w2.weight)
        if self.tp_group is not None:
            dist.all_reduce(f, group=self.tp_group)
        return ops.fused_add_rms_norm(f, residual, next_norm.weight, next_norm.eps)

    def _qkv(self, normed: Tensor, ops) -> Tensor:
        return ops.linear(normed, self.wqkv.weight, self.wqkv.bias)  # (N, KV * (g + 2) * D)

    def heads(self) -> tuple[int, int]:
        """(KV heads, query heads per KV head) of this rank (local under tensor parallelism)."""
        return self.wqkv.weight.shape[0] // ((self.group + 2) * self.head_dim), self.group


class FusedDecoder(nn.Module):
    """`model`'s decoder as fused layers. Takes over the model's w1/w3 weights (they are concatenated).

    Args:
        model: the model, or this rank's shard of it (`shard_tp_local`) when `tp_group` is given.
        ops: the op set (`TritonOps` or `TorchOps`).
        tp_group: the tensor-parallel process group; None on one device.
        max_positions: no position reaches this (the engine's max_model_len); None: unbounded.
    """

    def __init__(self, model: Transformer, ops, tp_group: dist.ProcessGroup | None = None,
                 max_positions: int | None = None):
        super().__init__()
        self.model = model
        self.ops = ops
        self.tp_group = tp_group
        self.layers = nn.ModuleList(FusedLayer(b, tp_group) for b in model.layers)
        c = model.config
        # dynamic NTK rotary grows its base only past max_position_embeddings; when no position can get there
        # (the engine's max_model_len), its frequencies are those of any position below, computed once here
        # instead of a dozen small kernels a step
        self.dynamic_rope = c.rope_type == "dynamic" and (max_positions is None
                                                          or max_positions > c.max_position_embeddings)
        self._inv_freq = None if self.dynamic_rope else model.rotary.inv_freq(
            torch.zeros(1, dtype=torch.long, device=model.tok_embeddings.weight.device))

    def forward(self, input_ids: Tensor, positions: Tensor, attention: AttentionBackend) -> Tensor:
        """(N,) ids and positions -> (N, hidden) final-normed hidden states."""
        ops = self.ops
        normed, residual, inv_freq = self.embed(input_ids, positions)
        for i, layer in enumerate(self.layers):
            normed, residual = layer(normed, residual, positions, inv_freq, attention, self.norm_after(i), ops)
        return normed

    def embed(self, input_ids: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N,) ids and positions -> (first norm of the embeddings, the embeddings, rotary inverse frequencies)."""
        m = self.model
        inv_freq = m.rotary.inv_freq(positions) if self.dynamic_rope else self._inv_freq
        residual = m.tok_embeddings(input_ids)
        first = self.norm_after(-1)
        return self.ops.rms_norm(residual, first.weight, first.eps), residual, inv_freq

    def norm_after(self, i: int) -> nn.Module:
        """The norm that follows layer i (-1: the embeddings): layer i + 1's attention norm, or the final norm."""
        return self.layers[i + 1].attention_norm if i + 1 < len(self.layers) else self.model.norm

    def logits(self, hidden: Tensor) -> Tensor:
        """(N, hidden) -> (N, vocab) logits in the weights' dtype."""
        logits = self.ops.linear(hidden, self.model.output.weight)  # (N, V / tp) under tensor parallelism
        if self.tp_group is None:
            return logits
        (N, v), tp = logits.shape, dist.get_world_size(self.tp_group)
        parts = torch.empty(tp * N, v, dtype=logits.dtype, device=logits.device)
        _all_gather_into_tensor(parts, logits.contiguous(), group=self.tp_group)
        return parts.view(tp, N, v).transpose(0, 1).reshape(N, tp * v)  # shards in rank order
