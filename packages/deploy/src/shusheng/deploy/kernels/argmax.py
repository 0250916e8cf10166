"""Greedy decoding's argmax over the logits, in one launch: ids[b] = argmax(x[b, :]), the first maximum on ties.

Layout: x [B, V] (last dim contiguous, row stride free), fp32, fp16 or bf16 (the LM head's own output: converting
to fp32 first is exact and would not change the answer, so no copy is made); ids [B] int64.

Kernel: grid (B, split). Program (b, s) scans its chunk of row b in tiles of BLOCK, keeping per lane the first
largest value and its index, then reduces the lanes (largest value, then smallest index). It leaves that pair in a
workspace, and the last of the row's programs to arrive (an arrival counter, as the skinny GEMM's split-K does)
reduces the row's pairs, so a few rows of 92k logits still spread over the whole GPU without a second kernel. The
split is a runtime argument: one compiled binary serves every batch size (a compile in the middle of serving costs a
request hundreds of milliseconds). Replacing the fp32 copy and the two-stage torch reduction (six kernels) saved
~20 us a decode step.

NaN: counted as +inf (torch's argmax returns the first NaN; here a NaN ties with +inf). Rows all -inf give 0, as torch.
"""

from __future__ import annotations

import torch

from shusheng.deploy.kernels._triton import kept_buffer, num_sms, pdl_args, pdl_enter, require_triton, tl, triton

BLOCK = 1024


@triton.jit
def _first_max(v, i, BIG: tl.constexpr):
    """(largest value, smallest index holding it) of the lanes `v`, `i`."""
    m = tl.max(v, axis=0)
    return m, tl.min(tl.where(v == m, i, BIG), axis=0)


@triton.jit(do_not_specialize=["split", "CHUNK"])  # one binary for every batch size
def _argmax_kernel(x_ptr, ids_ptr, ws_v_ptr, ws_i_ptr, cnt_ptr, V, CHUNK, stride_x, split,
                   MAX_SPLIT: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    BIG: tl.constexpr = 2147483647
    row = tl.program_id(0)
    part = tl.program_id(1)
    lo = part * CHUNK
    hi = tl.minimum(lo + CHUNK, V)
    pdl_enter(PDL)
    best_v = tl.full((BLOCK,), float("-inf"), tl.float32)
    best_i = tl.full((BLOCK,), BIG, tl.int32)
    base = x_ptr + row.to(tl.int64) * stride_x
    for k0 in range(lo, hi, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        v = tl.load(base + offs, mask=offs < hi, other=float("-inf")).to(tl.float32)
        v = tl.where(v != v, float("inf"), v)  # NaN
        take = v > best_v  # strictly: a lane keeps its earlier index on a tie
        best_v = tl.where(take, v, best_v)
        best_i = tl.where(take, offs, best_i)
    m, i = _first_max(best_v, best_i, BIG)
    tl.store(ws_v_ptr + row * split + part, m)
    tl.store(ws_i_ptr + row * split + part, i)
    done = tl.atomic_add(cnt_ptr + row, 1, sem="acq_rel")  # releases the stores above
    if done == split - 1:
        parts = tl.arange(0, MAX_SPLIT)
        pv = tl.load(ws_v_ptr + row * split + parts, mask=parts < split, other=float("-inf"), cache_modifier=".cg")
        pi = tl.load(ws_i_ptr + row * split + parts, mask=parts < split, other=BIG, cache_modifier=".cg")
        m, i = _first_max(pv, pi, BIG)
        tl.store(ids_ptr + row, tl.where(i == BIG, 0, i).to(tl.int64))
        tl.atomic_xchg(cnt_ptr + row, 0)


MAX_SPLIT = 128


def _splits(B: int, V: int, device: torch.device) -> int:
    """Programs per row: enough for about two per SM over the batch, at most MAX_SPLIT (the final reduce's tile)."""
    return max(1, min(triton.cdiv(2 * num_sms(device), B), triton.cdiv(V, BLOCK), MAX_SPLIT))


def argmax(x: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax of `x` (Triton kernel): `x.argmax(-1)` of a [B, V] tensor, the first maximum on ties.

    Args:
        x: [B, V] fp32, fp16 or bf16, last dim contiguous.

    Returns:
        [B] int64 ids on x's device.
    """
    require_triton("argmax")
    B, V = x.shape
    assert x.stride(1) == 1, "x must be [B, V] with a contiguous last dim"
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {x.dtype}"
    ids = torch.empty(B, dtype=torch.long, device=x.device)
    if B == 0:
        return ids
    split = _splits(B, V, x.device)
    chunk = triton.cdiv(triton.cdiv(V, split), BLOCK) * BLOCK
    # partial (value, index) pairs and per-row arrival counters (each launch leaves them zero)
    ws_v = kept_buffer("argmax values", x.device, B * split, torch.float32)
    ws_i = kept_buffer("argmax indices", x.device, B * split, torch.int32)
    cnt = kept_buffer("argmax counters", x.device, B, torch.int32, zero=True)
    _argmax_kernel[(B, split)](x, ids, ws_v, ws_i, cnt, V, chunk, x.stride(0), split, MAX_SPLIT=MAX_SPLIT,
                               BLOCK=BLOCK, num_warps=4, **pdl_args(x.device))
    return ids


def argmax_ref(x: torch.Tensor) -> torch.Tensor:
    """PyTorch reference of `argmax` (NaN aside); needs no triton."""
    return x.argmax(-1)
