"""SwiGLU activation of the fused gate/up projection: out = silu(gate) * up.

Layout: gate_up: [N, 2F] = [w1 x | w3 x] concatenated along the last dim (w1 and w3 fused into one GEMM), last dim
contiguous, row stride free; out: [N, F], last dim contiguous, row stride free. Any leading dims of gate_up are
flattened by the wrapper.

Semantics are the model's `F.silu(w1 x) * w3 x` (shusheng.model.model.FeedForward) with the same rounding points:
silu is computed in fp32 and rounded to the activation dtype, then the product is computed in fp32 and rounded.

Kernel: grid (N, cdiv(F, BLOCK)); program (n, b) handles columns [b * BLOCK, (b + 1) * BLOCK) of row n.
"""

import torch

from shusheng.deploy.kernels._triton import pdl_args, pdl_enter, require_triton, tl, triton


@triton.jit
def _silu_mul_kernel(
    gu_ptr,  # [N, 2F]
    out_ptr,  # [N, F]
    stride_gn,
    stride_on,
    F: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_enter(PDL)
    n = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < F
    gate = tl.load(gu_ptr + n * stride_gn + offs, mask=mask, other=0.0)
    up = tl.load(gu_ptr + n * stride_gn + F + offs, mask=mask, other=0.0).to(tl.float32)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)  # `F.silu` output, in the activation dtype
    tl.store(out_ptr + n * stride_on + offs, (act * up).to(gate.dtype), mask=mask)


def silu_mul(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up of a fused [gate | up] projection (Triton kernel).

    Args:
        gate_up: [..., 2F] fp32, fp16 or bf16, gate in the first F columns, up in the last F; last dim contiguous,
            leading dims viewable as one [N] dim.
        out: optional [..., F] output in gate_up's dtype, last dim contiguous. Allocated when None.

    Returns:
        out, [..., F].

    Raises:
        RuntimeError: when triton is not installed (use `silu_mul_ref`).
    """
    require_triton("silu_mul")
    two_f = gate_up.shape[-1]
    assert two_f % 2 == 0, f"gate_up's last dim must be even (2F), got {two_f}"
    assert gate_up.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {gate_up.dtype}"
    F = two_f // 2
    if out is None:
        out = gate_up.new_empty(*gate_up.shape[:-1], F)
    assert out.shape == (*gate_up.shape[:-1], F), f"out {tuple(out.shape)} must be {(*gate_up.shape[:-1], F)}"
    assert out.dtype == gate_up.dtype, f"out {out.dtype} must be gate_up's dtype {gate_up.dtype}"
    gu2 = gate_up if gate_up.dim() == 2 else gate_up.view(-1, two_f)
    out2 = out if out.dim() == 2 else out.view(-1, F)
    assert gu2.stride(1) == 1 and out2.stride(1) == 1, "the last dims of gate_up and out must be contiguous"
    N = gu2.shape[0]
    if N == 0:
        return out
    block = min(triton.next_power_of_2(F), 1024)
    _silu_mul_kernel[(N, triton.cdiv(F, block))](
        gu2, out2, gu2.stride(0), out2.stride(0), F=F, BLOCK=block, num_warps=4, **pdl_args(gate_up.device),
    )
    return out


def silu_mul_ref(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch reference of `silu_mul` (same arguments and semantics); needs no triton."""
    gate, up = gate_up.chunk(2, dim=-1)
    y = torch.nn.functional.silu(gate) * up
    return y if out is None else out.copy_(y)
