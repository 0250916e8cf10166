"""The serving forward pass: the model's own weights, run through fused kernels.

`shusheng.model.Transformer` is written for reading and training: each RMSNorm, rotary embedding, residual add and
SwiGLU is a handful of small PyTorch ops. In a decode step those dozens of tiny kernels per layer cost as much as the
weight-streaming GEMMs. `FusedDecoder` is a module swap over the same parameters: per layer one fused
residual-add + RMSNorm, one kernel that splits the grouped `wqkv` output and applies rotary to q and k, one GEMM for
w1 and w3 together (their weights concatenated once, the originals released) followed by one silu-multiply kernel.
With `TorchOps` it runs the kernels' PyTorch references (CPU), computing exactly what the model computes.

Tokens are flattened over the batch: input (N,) ids and positions, output (N, hidden).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shusheng.model import Transformer
from shusheng.model.attention import AttentionBackend


class FusedLayer(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
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
        N = normed.shape[0]
        D, g = self.head_dim, self.group
        qkv = self.wqkv(normed)  # (N, KV * (g + 2) * D)
        kv_heads = qkv.shape[-1] // ((g + 2) * D)  # local under tensor parallelism
        q, k, v = ops.qkv_rotary(qkv, positions, inv_freq, kv_heads, g, D)  # (N, H, D), (N, KV, D), (N, KV, D)
        a = attention(q[None], k[None], v[None], self.layer)[0]  # (N, H, D)
        a = self.wo(a.reshape(N, -1))
        normed, residual = ops.fused_add_rms_norm(a, residual, self.ffn_norm.weight, self.ffn_norm.eps)
        f = self.w2(ops.silu_mul(self.w13(normed)))
        return ops.fused_add_rms_norm(f, residual, next_norm.weight, next_norm.eps)


class FusedDecoder(nn.Module):
    """`model`'s decoder as fused layers. Takes over the model's w1/w3 weights (they are concatenated)."""

    def __init__(self, model: Transformer, ops):
        super().__init__()
        self.model = model
        self.ops = ops
        self.layers = nn.ModuleList(FusedLayer(b) for b in model.layers)
        self.dynamic_rope = model.config.rope_type == "dynamic"
        self._inv_freq = None if self.dynamic_rope else model.rotary.inv_freq(
            torch.zeros(1, dtype=torch.long, device=model.tok_embeddings.weight.device))

    def forward(self, input_ids: Tensor, positions: Tensor, attention: AttentionBackend) -> Tensor:
        """(N,) ids and positions -> (N, hidden) final-normed hidden states."""
        m, ops = self.model, self.ops
        inv_freq = m.rotary.inv_freq(positions) if self.dynamic_rope else self._inv_freq
        residual = m.tok_embeddings(input_ids)
        first = self.layers[0].attention_norm if len(self.layers) else m.norm
        normed = ops.rms_norm(residual, first.weight, first.eps)
        for i, layer in enumerate(self.layers):
            nxt = self.layers[i + 1].attention_norm if i + 1 < len(self.layers) else m.norm
            normed, residual = layer(normed, residual, positions, inv_freq, attention, nxt, ops)
        return normed

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.output(hidden)
