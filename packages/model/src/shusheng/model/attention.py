"""Attention backends: the model's attention layer computes q, k, v (after RoPE) and calls one of these.

Contract: `backend(q, k, v, layer) -> out` with q (B, T, H, D), k and v (B, T, KV, D), out (B, T, H, D); H is a
multiple of KV (grouped-query attention). `backend.positions(B, T, device)` gives the rotary positions the backend
implies when the caller passes none. A backend object carries the per-batch metadata (padding mask, document
boundaries, KV cache), so swapping attention is passing a different object, never a flag inside the model.

- `SDPAAttention`: dense causal attention (training, reference), optional left/right padding mask.
- `varlen_attention(cu_seqlens)`: packed documents in one row, no attention across documents, positions restart
  per document. Implementations, fastest first: flash-attn (if installed), torch's `varlen_attn` (FA2 inside
  torch), FlexAttention with a document mask, and a per-document SDPA loop that is correct anywhere (CPU).
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AttentionBackend(nn.Module):
    """Base class: dense positions 0..T-1 unless a subclass knows better."""

    def positions(self, B: int, T: int, device: torch.device) -> Tensor:
        return torch.arange(T, device=device).expand(B, T)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, layer: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def sdpa(q: Tensor, k: Tensor, v: Tensor, **kw) -> Tensor:
    """SDPA on (B, H, T, D) tensors with GQA (k, v may have fewer heads)."""
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1], **kw)


class SDPAAttention(AttentionBackend):
    """Dense causal attention through `F.scaled_dot_product_attention`.

    Args:
        padding_mask: optional (B, T) bool, True for real tokens. Padded query rows attend to themselves only, so
            they stay finite (their outputs are meaningless and should be ignored by the caller).
    """

    def __init__(self, padding_mask: Tensor | None = None):
        super().__init__()
        self.padding_mask = padding_mask
        self._mask = None if padding_mask is None else _causal_padding_mask(padding_mask)

    def positions(self, B: int, T: int, device: torch.device) -> Tensor:
        if self.padding_mask is None:
            return super().positions(B, T, device)
        return (self.padding_mask.long().cumsum(-1) - 1).clamp(min=0)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, layer: int) -> Tensor:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if self._mask is None:
            out = sdpa(q, k, v, is_causal=True)
        else:
            out = sdpa(q, k, v, attn_mask=self._mask)
        return out.transpose(1, 2)


def _causal_padding_mask(padding_mask: Tensor) -> Tensor:
    """(B, T) real-token mask -> (B, 1, T, T) bool: causal, real keys only, plus the diagonal."""
    T = padding_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=padding_mask.device).tril()
    mask = causal & padding_mask[:, None, None, :]
    return mask | torch.eye(T, dtype=torch.bool, device=padding_mask.device)


# ---------------------------------------------------------------------------------------------------------------
# Packed documents (varlen)
# ---------------------------------------------------------------------------------------------------------------


class VarlenAttention(AttentionBackend):
    """Causal attention within documents packed along the sequence (all B*T tokens flattened, in order).

    Args:
        cu_seqlens: (N + 1,) int cumulative document lengths over the flattened B*T tokens, starting at 0 and
            ending at B*T.
        max_seqlen: the longest document (computed when omitted).
    """

    name = "base"

    def __init__(self, cu_seqlens: Tensor, max_seqlen: int | None = None, device: torch.device | str | None = None):
        super().__init__()
        # checks run where cu_seqlens lives: pass CPU offsets with device="cuda" to avoid host syncs
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or int(cu_seqlens[0]) != 0:
            raise ValueError("cu_seqlens must be a 1-D tensor [0, len_1, len_1 + len_2, ..., total]")
        lengths = cu_seqlens.diff()
        if bool((lengths <= 0).any()):
            raise ValueError("cu_seqlens must be strictly increasing (every document needs at least one token)")
        self.max_seqlen = int(lengths.max()) if max_seqlen is None else max_seqlen
        self.total = int(cu_seqlens[-1])
        self.cu_seqlens = cu_seqlens.to(device=device or cu_seqlens.device, dtype=torch.int32, non_blocking=True)

    def doc_ids(self) -> Tensor:
        """(total,) index of the document each token belongs to."""
        idx = torch.arange(self.total, device=self.cu_seqlens.device, dtype=torch.int32)
        return torch.searchsorted(self.cu_seqlens[1:], idx, right=True)

    def positions(self, B: int, T: int, device: torch.device) -> Tensor:
        self._check_total(B * T)
        idx = torch.arange(self.total, device=self.cu_seqlens.device)
        pos = idx - self.cu_seqlens.long()[self.doc_ids()]
        return pos.view(B, T).to(device)

    def _check_total(self, n: int) -> None:
        if n != self.total:
            raise ValueError(f"cu_seqlens covers {self.total} tokens but the batch has {n} (B * T)")

    def forward(self, q: Tensor, k: Tensor, v: Tensor, layer: int) -> Tensor:
        B, T, H, D = q.shape
        self._check_total(B * T)
        out = self.attend(q.reshape(B * T, H, D), k.reshape(B * T, -1, D), v.reshape(B * T, -1, D))
        return out.view(B, T, H, D)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        """q (N, H, D), k/v (N, KV, D) -> (N, H, D)."""
        raise NotImplementedError


class LoopVarlenAttention(VarlenAttention):
    """One causal SDPA call per document: correct on any device and dtype (the CPU path)."""

    name = "sdpa_loop"

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = torch.empty_like(q)
        bounds = self.cu_seqlens.tolist()
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            qs, ks, vs = (t[s:e].transpose(0, 1)[None] for t in (q, k, v))  # (1, H, L, D)
            out[s:e] = sdpa(qs, ks, vs, is_causal=True)[0].transpose(0, 1)
        return out


class TorchVarlenAttention(VarlenAttention):
    """`torch.nn.attention.varlen.varlen_attn` (FlashAttention-2 inside torch; CUDA, fp16/bf16)."""

    name = "torch_varlen"

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        cu, m = self.cu_seqlens, self.max_seqlen
        kw = {"window_size": (-1, 0)}  # (-1, 0) means causal
        if _VARLEN_HAS_GQA_FLAG:  # torch 2.13 asks for it; 2.11 does GQA without a flag
            kw["enable_gqa"] = q.shape[1] != k.shape[1]
        return _TORCH_VARLEN(q, k, v, cu, cu, m, m, **kw)


class FlashAttnVarlenAttention(VarlenAttention):
    """The external flash-attn package's `flash_attn_varlen_func` (used when installed)."""

    name = "flash_attn"

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        from flash_attn import flash_attn_varlen_func

        cu, m = self.cu_seqlens, self.max_seqlen
        return flash_attn_varlen_func(q, k, v, cu, cu, m, m, causal=True)


class FlexVarlenAttention(VarlenAttention):
    """FlexAttention (compiled) with a document-causal block mask, built once per batch and shared by all layers."""

    name = "flex"

    def __init__(self, cu_seqlens: Tensor, max_seqlen: int | None = None, device: torch.device | str | None = None):
        super().__init__(cu_seqlens, max_seqlen, device)
        from torch.nn.attention.flex_attention import create_block_mask

        doc = self.doc_ids()

        def document_causal(b, h, qi, ki):
            return (doc[qi] == doc[ki]) & (qi >= ki)

        self.block_mask = create_block_mask(
            document_causal, None, None, self.total, self.total, device=str(self.cu_seqlens.device)
        )

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))  # (1, H, N, D)
        out = _compiled_flex()(q, k, v, block_mask=self.block_mask, enable_gqa=q.shape[1] != k.shape[1])
        return out[0].transpose(0, 1)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.10
        return None
    return varlen_attn


_TORCH_VARLEN = _torch_varlen_fn()
_VARLEN_HAS_GQA_FLAG = _TORCH_VARLEN is not None and "enable_gqa" in inspect.signature(_TORCH_VARLEN).parameters


VARLEN_IMPLS: dict[str, type[VarlenAttention]] = {
    c.name: c for c in (FlashAttnVarlenAttention, TorchVarlenAttention, FlexVarlenAttention, LoopVarlenAttention)
}


def available_varlen_impls(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> list[str]:
    """Varlen implementations usable on `device` with `dtype`, fastest first."""
    impls = []
    if torch.device(device).type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        impls += ["flash_attn"] if _has_flash_attn() else []
        impls += ["torch_varlen"] if _TORCH_VARLEN is not None else []
    if torch.device(device).type == "cuda":
        impls.append("flex")
    return impls + ["sdpa_loop"]


def varlen_attention(
    cu_seqlens: Tensor, max_seqlen: int | None = None, impl: str = "auto", dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str | None = None,
) -> VarlenAttention:
    """The packed-document backend for `cu_seqlens`.

    Args:
        cu_seqlens: (N + 1,) cumulative document lengths over the flattened batch.
        max_seqlen: longest document (an upper bound works); computed when omitted.
        impl: "auto" (the fastest available for the device and `dtype`) or one of `VARLEN_IMPLS`.
        dtype: the activation dtype, for "auto".
        device: where attention runs; default where `cu_seqlens` lives. Building from CPU offsets with
            device="cuda" keeps the checks off the GPU stream (no host sync per batch).
    """
    device = torch.device(device) if device is not None else cu_seqlens.device
    if impl == "auto":
        impl = available_varlen_impls(device, dtype)[0]
    if impl not in VARLEN_IMPLS:
        raise ValueError(f"unknown varlen attention impl {impl!r}; choose from {sorted(VARLEN_IMPLS)} or 'auto'")
    return VARLEN_IMPLS[impl](cu_seqlens, max_seqlen, device)


def cu_seqlens_from_lengths(lengths: list[int] | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """Document lengths -> (N + 1,) int32 cumulative offsets starting at 0."""
    lengths = torch.as_tensor(lengths, dtype=torch.int32, device=device)
    return F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
