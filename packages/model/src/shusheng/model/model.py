"""The InternLM2 / Llama-family decoder, in one file.

One architecture covers InternLM2 and Llama, Qwen2 and Mistral checkpoints: RMSNorm, rotary position embeddings
(plain, linear, dynamic-NTK exactly as Hugging Face computes it, and Llama-3 scaling), grouped-query attention with
InternLM2's fused `wqkv` projection, and a SwiGLU feed-forward (`w2(silu(w1 x) * w3 x)`). Module names follow
InternLM2 (`tok_embeddings`, `attention.wqkv/wo`, `feed_forward.w1/w3/w2`, `attention_norm`, `ffn_norm`, `norm`,
`output`); `checkpoint.py` maps them to and from Llama naming.

The fused `wqkv` is grouped per KV head: its output rows are `KV` groups of `[q_1 .. q_g, k, v]` (g = H / KV), each
`head_dim` rows. A column shard over whole groups is a tensor-parallel shard, so `parallel.apply_tp` needs no
re-layout and the code below infers the local head counts from the tensor it gets.

Attention itself is a swappable backend (`attention.py`): the layer computes q, k, v after RoPE and calls
`attention(q, k, v, layer)`. Dense causal SDPA is the default; packed documents, the reference generator's KV
cache and the serving engine's paged cache are other backends. The model is single-device; parallelism is applied
from outside (`parallel.py`). Build it on the meta device and materialize with `build_model` or `load_pretrained`.

References: InternLM2 (arXiv:2403.17297) and its HF `modeling_internlm2.py`; gpt-fast `model.py`; HF
`modeling_llama.py` and `modeling_rope_utils.py` (the rope variants).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from .attention import AttentionBackend, SDPAAttention
from .config import ModelConfig
from .loss import IGNORE_INDEX, linear_cross_entropy


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalize in fp32 and scale after casting back, as HF does (bit-compatible in fp32).
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Rotary(nn.Module):
    """Rotary embeddings; cos/sin are computed from positions each call (no buffers, so meta-init is trivial)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    def inv_freq(self, positions: Tensor) -> Tensor:
        c, dim = self.cfg, self.cfg.head_dim
        exponent = torch.arange(0, dim, 2, dtype=torch.int64, device=positions.device).float() / dim
        if c.rope_type == "dynamic":
            # NTK-aware base, grown with the longest position in this call (HF's dynamic_rope_update). Tensor math,
            # so no host sync and it stays capturable.
            seq_len = torch.clamp(positions.max() + 1, min=c.max_position_embeddings).float()
            base = c.rope_theta * ((c.rope_factor * seq_len / c.max_position_embeddings) - (c.rope_factor - 1)) ** (
                dim / (dim - 2)
            )
            return 1.0 / (base**exponent)
        inv = 1.0 / (c.rope_theta**exponent)
        if c.rope_type == "linear":
            return inv / c.rope_factor
        if c.rope_type == "llama3":
            return _llama3_inv_freq(inv, c)
        return inv

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """positions (B, T) -> cos, sin (B, T, 1, head_dim) in `dtype`."""
        freqs = positions[..., None].float() * self.inv_freq(positions)  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _llama3_inv_freq(inv: Tensor, c: ModelConfig) -> Tensor:
    low_wavelen = c.rope_original_max_position_embeddings / c.rope_low_freq_factor
    high_wavelen = c.rope_original_max_position_embeddings / c.rope_high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / c.rope_factor, inv)
    smooth = (c.rope_original_max_position_embeddings / wavelen - c.rope_low_freq_factor) / (
        c.rope_high_freq_factor - c.rope_low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / c.rope_factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, T, H, D); rotate-half convention (HF Llama and InternLM2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.head_dim = cfg.head_dim
        self.group = cfg.num_heads // cfg.num_kv_heads  # query heads per KV head
        self.wqkv = nn.Linear(cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim, cfg.qkv_bias)
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.o_bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attention: AttentionBackend) -> Tensor:
        B, T, _ = x.shape
        g, D = self.group, self.head_dim
        qkv = self.wqkv(x).view(B, T, -1, g + 2, D)  # (B, T, KV, g+2, D); KV is local under TP
        q = qkv[:, :, :, :g].reshape(B, T, -1, D)  # (B, T, H, D)
        k, v = qkv[:, :, :, g], qkv[:, :, :, g + 1]  # (B, T, KV, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attention(q, k, v, self.layer)  # (B, T, H, D)
        return self.wo(out.reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)  # gate
        self.w3 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)  # up
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)  # down

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attention: AttentionBackend) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, attention)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rotary = Rotary(cfg)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.default_attention = SDPAAttention()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor | None = None,
        attention: AttentionBackend | None = None,
        return_hidden: bool = False,
        labels: Tensor | None = None,
    ) -> Tensor:
        """Run the decoder.

        Args:
            input_ids: (B, T) token ids.
            positions: (B, T) or (T,) rotary positions; default: the backend's (0..T-1, restarted per packed document,
                shifted past left padding, or offset by the KV cache).
            attention: the attention backend; default dense causal SDPA.
            return_hidden: return the final normalized hidden states (B, T, hidden) instead of logits, e.g. for
                last-token logits (`model.output(h[:, -1:])`) or embeddings.
            labels: (B, T) target ids (-100: no loss); return the summed cross-entropy instead of logits, through
                the fused chunked head (`loss.linear_cross_entropy`) that never holds the full logits.

        Returns:
            Logits (B, T, vocab) in the weights' dtype, hidden states when `return_hidden`, or the fp32 summed loss
            when `labels` is given.
        """
        attention = attention if attention is not None else self.default_attention
        B, T = input_ids.shape
        if positions is None:
            positions = attention.positions(B, T, input_ids.device)
        elif positions.dim() == 1:
            positions = positions.expand(B, T)
        self._check_window(T)
        h = self.tok_embeddings(input_ids)  # (B, T, D)
        cos, sin = self.rotary(positions, h.dtype)
        for block in self.layers:
            h = block(h, cos, sin, attention)
        h = self.norm(h)
        if labels is None:
            return h if return_hidden else self.output(h)
        if isinstance(self.output.weight, DTensor):  # tensor parallel: the sharded head gathers the logits itself
            logits = self.output(h).float()
            return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        return linear_cross_entropy(h, self.output.weight, labels)

    def _check_window(self, T: int) -> None:
        w = self.config.sliding_window
        if w is not None and T > w:
            raise ValueError(
                f"sequence of {T} tokens exceeds the checkpoint's sliding_window ({w}); sliding-window attention is "
                f"not implemented, so keep sequences within {w} tokens"
            )

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Initialize parameters in place (normal(0, initializer_range) weights, zero biases, unit norms)."""
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if seed is None else seed)
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                # Draw on the CPU so the same seed gives the same weights on any device.
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std))


def build_model(
    cfg: ModelConfig | str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, seed: int = 0
) -> Transformer:
    """Build on the meta device, then materialize on `device` with fresh random weights.

    Args:
        cfg: a ModelConfig or a preset name (`ModelConfig.from_name`).
        device: where the weights live.
        dtype: parameter dtype; default the config's `torch_dtype`.
        seed: initialization seed (the same weights on every device).
    """
    cfg = ModelConfig.from_name(cfg) if isinstance(cfg, str) else cfg
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    model.tie_weights()
    model.to(dtype or getattr(torch, cfg.torch_dtype))
    model.init_weights(seed)
    return model
