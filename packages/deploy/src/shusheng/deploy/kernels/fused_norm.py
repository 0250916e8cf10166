"""RMSNorm, alone or fused with the residual add that precedes it.

Layout: x, residual, out: [N, D] (any leading dims are flattened by the wrappers), D contiguous (stride 1); the row
stride is free for x and out. weight: [D] contiguous, same dtype as x.

Semantics are the model's `RMSNorm` (shusheng.model.model) bit for bit in its rounding points: normalize in fp32,
cast the normalized row back to x's dtype, then multiply by the weight in that dtype:

    h = x.float() * rsqrt(mean(x.float() ** 2) + eps);  out = weight * h.to(x.dtype)

`fused_add_rms_norm` first forms new_residual = x + residual in x's dtype (the block's `x + attn_out`) and
normalizes that rounded sum; it reads x and residual once and writes new_residual in place into `residual`.

Kernel: grid (cdiv(N, ROWS),); program i normalizes rows [i * ROWS, (i + 1) * ROWS) as one [ROWS, BLOCK_D] tile
(ROWS > 1 only for small D, so tiny rows still fill a program). Each row is loaded whole before its output is
stored, so `out` may alias x.
"""

import torch

from shusheng.deploy.kernels._triton import pdl_args, pdl_enter, require_triton, tl, triton


@triton.jit(do_not_specialize=["N"])  # rows vary by step: one binary for all
def _rms_norm_kernel(
    x_ptr,  # [N, D]
    r_ptr,  # [N, D] residual, read and overwritten with x + residual (HAS_RESIDUAL only)
    w_ptr,  # [D]
    out_ptr,  # [N, D]
    N,
    eps,
    stride_xn,
    stride_rn,
    stride_on,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ROWS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_enter(PDL)
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # [ROWS]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask = (rows[:, None] < N) & (cols[None, :] < D)  # [ROWS, BLOCK_D]
    x = tl.load(x_ptr + rows[:, None] * stride_xn + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r_ptrs = r_ptr + rows[:, None] * stride_rn + cols[None, :]
        r = tl.load(r_ptrs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # rounded to the activation dtype, as `x + attn_out`
        tl.store(r_ptrs, x, mask=mask)
    h = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(h * h, axis=1) / D + eps)  # [ROWS]
    h = (h * rstd[:, None]).to(x.dtype).to(tl.float32)  # `h.to(x.dtype)` before the weight, as the model does
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * stride_on + cols[None, :], (w[None, :] * h).to(x.dtype), mask=mask)


def _rows(t: torch.Tensor, D: int, name: str) -> torch.Tensor:
    """[..., D] -> a [N, D] view (no copy) with a contiguous last dim."""
    assert t.shape[-1] == D, f"{name} {tuple(t.shape)}: last dim must be D={D}"
    t = t if t.dim() == 2 else t.view(-1, D)
    assert t.stride(1) == 1, f"{name}: the last dim must be contiguous"
    return t


def _launch(x, residual, weight, eps, out) -> torch.Tensor:
    D = x.shape[-1]
    assert weight.shape == (D,) and weight.is_contiguous(), f"weight {tuple(weight.shape)} must be contiguous [D={D}]"
    assert weight.dtype == x.dtype, f"weight {weight.dtype} and x {x.dtype} must share one dtype"
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {x.dtype}"
    out = torch.empty_like(x) if out is None else out
    assert out.shape == x.shape and out.dtype == x.dtype, f"out {tuple(out.shape)} {out.dtype} must match x"
    x2, out2 = _rows(x, D, "x"), _rows(out, D, "out")
    r2 = x2 if residual is None else _rows(residual, D, "residual")
    N = x2.shape[0]
    if N == 0:
        return out
    block_d = triton.next_power_of_2(D)
    rows = max(1, min(16, 2048 // block_d))  # several rows per program when D is small
    num_warps = min(16, max(1, rows * block_d // 256))
    _rms_norm_kernel[(triton.cdiv(N, rows),)](
        x2, r2, weight, out2, N, eps,
        x2.stride(0), r2.stride(0), out2.stride(0),
        D=D, BLOCK_D=block_d, ROWS=rows, HAS_RESIDUAL=residual is not None, num_warps=num_warps,
        **pdl_args(x.device),
    )
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of the last dim of x (Triton kernel), as the model's `RMSNorm`.

    Args:
        x: [..., D] fp32, fp16 or bf16; the last dim contiguous, leading dims viewable as one [N] dim.
        weight: [D] contiguous, x's dtype.
        eps: added to the mean square.
        out: optional [..., D] output (same shape and dtype as x); may be x itself. Allocated when None.

    Returns:
        out, [..., D] in x's dtype.

    Raises:
        RuntimeError: when triton is not installed (use `rms_norm_ref`).
    """
    require_triton("rms_norm")
    return _launch(x, None, weight, eps, out)


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """residual += x, then RMSNorm of the sum, in one pass (Triton kernel).

    The block's `h = h + attn_out; normed = ffn_norm(h)`: the sum is rounded to x's dtype, written in place into
    `residual`, and normalized.

    Args:
        x: [..., D] the branch output (attention or feed-forward), fp32, fp16 or bf16; last dim contiguous.
        residual: [..., D] the residual stream, same shape and dtype as x; overwritten with x + residual.
        weight: [D] contiguous, x's dtype.
        eps: added to the mean square.
        out: optional [..., D] output for the normalized sum; may be x itself. Allocated when None.

    Returns:
        (normed, residual): the normalized sum and `residual` itself, now holding the sum.

    Raises:
        RuntimeError: when triton is not installed (use `fused_add_rms_norm_ref`).
    """
    require_triton("fused_add_rms_norm")
    assert residual.shape == x.shape and residual.dtype == x.dtype, (
        f"residual {tuple(residual.shape)} {residual.dtype} must match x {tuple(x.shape)} {x.dtype}"
    )
    assert out is None or out.data_ptr() != residual.data_ptr(), "out must not alias residual"
    return _launch(x, residual, weight, eps, out), residual


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch reference of `rms_norm` (same arguments and semantics); needs no triton."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    y = weight * h.to(x.dtype)
    return y if out is None else out.copy_(y)


def fused_add_rms_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference of `fused_add_rms_norm` (same arguments and semantics, residual updated in place)."""
    residual.add_(x)
    return rms_norm_ref(residual, weight, eps, out), residual
