"""Skinny GEMM for decode: y = x @ W^T (+ b) when x has a few rows (batch-1 to batch-16 decode).

With one to a few rows a linear layer is a stream over its weight: its time is the weight's bytes over memory
bandwidth, if enough loads are in flight on every SM. cuBLAS's kernels for M = 1 reach about three quarters of copy
bandwidth on Hopper in a decode step, less on the small projections. These kernels give every program a slab of
whole weight rows, or with split-K a part of their columns (the last program of a slab to finish sums the partials,
so there is no second kernel), so that the grid covers the SMs for every shape.

Layout: x [M, K] (last dim contiguous, row stride free), W [N, K] (nn.Linear's weight, contiguous), b [N] or None,
y [M, N] contiguous in x's dtype. Accumulation in fp32.

Kernels:
- `_gemv_rows_kernel` (M = 1): per K-tile, the [BLOCK_N, BLOCK_K] weight tile times x's tile, reduced along K at
  the end (no tensor cores: they would idle anyway).
- `_gemv_dot_kernel` (M <= 16): x's rows padded to 16 and `tl.dot` per K-tile (its loads are software-pipelined).

With `glu=True` either kernel computes SwiGLU over a fused [w1 | w3] weight: its output columns are taken as
interleaved (gate j, up j) pairs, so a program holds both halves of its pairs and stores silu(gate) * up, with
`silu_mul`'s rounding points, instead of the product: the activation costs no kernel of its own (on an H200 the
7B w1|w3 went from 60.1 us with cuBLAS + `silu_mul` to 57.9 us, and its floor is 54.6).

On Hopper and newer the kernels launch with programmatic dependent launch (`_triton.use_pdl`): their programs are
resident and set up while the previous kernel finishes, and wait for it before touching x (`pdl_enter`). Asking L2
for the first weight bytes before that wait was measured too and gained nothing (docs/benchmarks.md).

Which kernel and launch configuration serves a (rows, N, K, dtype) is decided once per process by timing every
candidate, cuBLAS included, as a decode step runs them: inside a CUDA graph, cycling through copies of the weight
that do not fit in L2 (`time_in_graph`). A shape first met during a CUDA-graph capture uses cuBLAS. The pick is
by timing, so two processes may pick differently for a shape and their bf16 outputs differ in rounding (as with
cuBLAS's own heuristics); within a process a shape always runs the same kernel, deterministically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shusheng.deploy.kernels._triton import (
    HAS_TRITON,
    kept_buffer,
    pdl_args,
    pdl_enter,
    require_triton,
    tl,
    triton,
)
from shusheng.deploy.kernels.swiglu import silu_mul

MAX_ROWS = 16  # x with more rows goes to cuBLAS (F.linear)


@triton.jit
def _weight_rows(rn, N, GLU: tl.constexpr):
    """The weight rows of output columns `rn`: themselves, or with GLU (columns interleaved gate, up, gate, up, ...
    over a [gate | up] weight of N rows) gate row j and up row N/2 + j for columns 2j and 2j + 1."""
    if GLU:
        return (rn % 2) * (N // 2) + rn // 2
    return rn


@triton.jit
def _store(acc, y_ptr, rm, rn, m_mask, n_mask, stride_ym, N, GLU: tl.constexpr):
    """Store the fp32 tile `acc` to y rounded to y's dtype; with GLU, y[:, j] = silu(gate) * up of the interleaved
    column pair (2j, 2j + 1), with `silu_mul`'s rounding points (the GEMM output, then silu, then the product)."""
    dt = y_ptr.dtype.element_ty
    if GLU:
        BM: tl.constexpr = acc.shape[0]
        BN: tl.constexpr = acc.shape[1] // 2
        gate, up = tl.split(tl.reshape(acc, (BM, BN, 2)))
        gate = gate.to(dt).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
        j = tl.program_id(0) * BN + tl.arange(0, BN)
        mask = m_mask[:, None] & (j < N // 2)[None, :]
        tl.store(y_ptr + rm[:, None] * stride_ym + j[None, :], (act * up.to(dt).to(tl.float32)).to(dt), mask=mask)
    else:
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc.to(dt), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _finish(acc, y_ptr, b_ptr, ws_ptr, cnt_ptr, rm, rn, m_mask, n_mask, stride_ym, N, M_PAD: tl.constexpr,
            HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, GLU: tl.constexpr):
    """Store the [M_PAD, BLOCK_N] fp32 tile `acc` (+ bias) to y (`_store`); with split-K, the last of the SPLIT
    programs of a column block sums the partials the others left in the workspace (and re-arms the block's
    counter)."""
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT > 1:
        pid_k = tl.program_id(1)
        ws = ws_ptr + rm[:, None] * N + rn[None, :]
        tl.store(ws + pid_k * M_PAD * N, acc, mask=mask)
        done = tl.atomic_add(cnt_ptr + tl.program_id(0), 1, sem="acq_rel")  # releases the store above
        if done == SPLIT - 1:
            acc = tl.zeros_like(acc)
            for k in range(SPLIT):
                acc += tl.load(ws + k * M_PAD * N, mask=mask, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                acc += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            _store(acc, y_ptr, rm, rn, m_mask, n_mask, stride_ym, N, GLU)
            tl.atomic_xchg(cnt_ptr + tl.program_id(0), 0)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        _store(acc, y_ptr, rm, rn, m_mask, n_mask, stride_ym, N, GLU)


@triton.jit
def _gemv_rows_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, N, K, K_CHUNK, stride_wn,
                      HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
                      PDL: tl.constexpr, GLU: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    n_mask = rn < N
    k_lo = tl.program_id(1) * K_CHUNK
    k_hi = tl.minimum(k_lo + K_CHUNK, K)
    pdl_enter(PDL)
    w_ptrs = w_ptr + _weight_rows(rn, N, GLU)[:, None].to(tl.int64) * stride_wn + rk[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k_mask = rk + k0 < k_hi
        x = tl.load(x_ptr + k0 + rk, mask=k_mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptrs + k0, mask=n_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        acc += w * x[None, :]
    y = tl.sum(acc, axis=1)[None, :]
    rm = tl.arange(0, 1)
    _finish(y, y_ptr, b_ptr, ws_ptr, cnt_ptr, rm, rn, rm < 1, n_mask, 0, N, 1, HAS_BIAS, SPLIT, GLU)


@triton.jit(do_not_specialize=["M"])  # 1..16 rows: one binary for all
def _gemv_dot_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, K_CHUNK, stride_xm, stride_wn, stride_ym,
                     HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, PDL: tl.constexpr, GLU: tl.constexpr):
    rm = tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_mask, n_mask = rm < M, rn < N
    k_lo = tl.program_id(1) * K_CHUNK
    k_hi = tl.minimum(k_lo + K_CHUNK, K)
    pdl_enter(PDL)
    x_ptrs = x_ptr + rm[:, None] * stride_xm + rk[None, :]
    w_ptrs = w_ptr + _weight_rows(rn, N, GLU)[:, None].to(tl.int64) * stride_wn + rk[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k_mask = rk + k0 < k_hi
        x = tl.load(x_ptrs + k0, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs + k0, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
    _finish(acc, y_ptr, b_ptr, ws_ptr, cnt_ptr, rm, rn, m_mask, n_mask, stride_ym, N, BLOCK_M, HAS_BIAS, SPLIT,
            GLU)


# (variant, BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT) candidates; "cublas" is F.linear itself
CUBLAS = ("cublas", 0, 0, 0, 0, 1)
# the configurations that won some shape of the InternLM2 1.8B / 7B presets at 1, 4 or 16 rows on an H200 (of 24
# tried: `benchmarks/gemv.py`); fewer candidates keep the engine's start-up tuning short
_CANDIDATES = [
    ("rows", 4, 1024, 4, 3, 1), ("rows", 4, 1024, 4, 3, 2), ("rows", 8, 512, 4, 3, 1),
    ("dot", 16, 256, 4, 4, 1), ("dot", 32, 256, 4, 3, 1), ("dot", 32, 256, 4, 3, 4), ("dot", 64, 128, 4, 4, 1),
    ("dot", 64, 128, 4, 4, 2), ("dot", 64, 128, 4, 4, 4), ("dot", 128, 128, 8, 3, 1),
]
_picked: dict[tuple, tuple] = {}
TUNE_CUBLAS = True  # cuBLAS is one of the timed candidates (False: the best Triton configuration serves every shape)
GLU_EPILOGUE = True  # `linear_silu_mul` may apply SwiGLU in the GEMM's epilogue (False: always a kernel of its own)


def candidates(M: int) -> list[tuple]:
    """The kernel configurations that can run `M` rows (the rows variant takes one)."""
    return [c for c in _CANDIDATES if c[0] == "dot" or M == 1]


def _launch(cfg, x, w, b, y, glu=False):
    variant, block_n, block_k, warps, stages, split = cfg
    if variant == "cublas":
        if glu:
            return silu_mul(torch.mm(x, w.t()), out=y)
        return torch.addmm(b, x, w.t(), out=y) if b is not None else torch.mm(x, w.t(), out=y)
    M, K = x.shape
    N = w.shape[0]
    k_chunk = triton.cdiv(triton.cdiv(K, split), block_k) * block_k
    split = triton.cdiv(K, k_chunk)
    grid = (triton.cdiv(N, block_n), split)
    m_pad = 1 if variant == "rows" else 16
    if split > 1:  # partials, and per-column-block arrival counters (each kernel leaves them zero)
        ws = kept_buffer("gemv partials", x.device, split * m_pad * N, torch.float32)
        cnt = kept_buffer("gemv counters", x.device, grid[0], torch.int32, zero=True)
    else:
        ws = cnt = y
    bias = b if b is not None else w  # never read without HAS_BIAS
    common = dict(HAS_BIAS=b is not None, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=split, GLU=glu, num_warps=warps,
                  num_stages=stages, **pdl_args(x.device))
    if variant == "rows":
        _gemv_rows_kernel[grid](x, w, bias, y, ws, cnt, N, K, k_chunk, w.stride(0), **common)
    else:
        precision = "ieee" if x.dtype == torch.float32 else "tf32"  # tf32 only matters for fp32 inputs
        _gemv_dot_kernel[grid](x, w, bias, y, ws, cnt, M, N, K, k_chunk, x.stride(0), w.stride(0), y.stride(0),
                               PRECISION=precision, BLOCK_M=16, **common)
    return y


def time_in_graph(fn_of_weight, weights: list[torch.Tensor], replays: int = 5) -> float:
    """Seconds per call of `fn_of_weight(w)` as a decode step runs it: captured in a CUDA graph (no launch gaps),
    cycling through enough distinct weights that none is still in L2 when it comes round again."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for w in weights[:2]:
            fn_of_weight(w)  # compile / warm outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in weights:
            fn_of_weight(w)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e-3 / (replays * len(weights))


def rotation(w: torch.Tensor, min_bytes: int = 256 << 20, max_copies: int = 32) -> list[torch.Tensor]:
    """`w` and copies of it, together at least `min_bytes` (several L2 sizes) where that takes <= max_copies."""
    n = min(max_copies, max(1, -(-min_bytes // (w.numel() * w.element_size()))))
    return [w] + [w.clone() for _ in range(n - 1)]


def _config(x, w, b, y, glu):
    M = x.shape[0]
    key = (M == 1, M <= 4, w.shape[0], w.shape[1], w.dtype, b is not None, w.device, glu)
    cfg = _picked.get(key)
    if cfg is not None:
        return cfg
    if not w.is_cuda:  # the interpreter: any configuration is right, the first is quick to run
        return candidates(M)[0]
    if torch.cuda.is_current_stream_capturing():
        return CUBLAS  # nothing timed for this shape: cuBLAS, never wrong and never far off
    times = tune(x, w, b, y, glu)
    _picked[key] = cfg = min(times, key=times.get)
    return cfg


def tune(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, y: torch.Tensor,
         glu: bool = False) -> dict[tuple, float]:
    """Seconds per call of cuBLAS (followed by `silu_mul` with `glu`) and of every candidate configuration for
    these operands (`time_in_graph`)."""
    weights = rotation(w)
    return {cfg: time_in_graph(lambda wt, cfg=cfg: _launch(cfg, x, wt, b, y, glu), weights)
            for cfg in [CUBLAS] * TUNE_CUBLAS + candidates(x.shape[0])}


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: tuple[int, int, int, int] | None = None, glu: bool = False) -> torch.Tensor:
    """x @ weight.T (+ bias) for x with 1..16 rows (Triton kernel); with `glu`, silu(gate) * up of that product.

    Args:
        x: [M, K], 1 <= M <= 16, fp32/fp16/bf16, last dim contiguous.
        weight: [N, K] contiguous, x's dtype; with `glu` the [gate | up] rows of a fused w1|w3 (N = 2F).
        bias: [N] or None (not with `glu`).
        config: a `_CANDIDATES` entry (or CUBLAS) to force (tests, benchmarks); otherwise the fastest of them for
            this shape, timed in a CUDA graph on first use.
        glu: apply SwiGLU in the kernel's epilogue (`silu_mul` of the product, with its rounding points): each
            program computes a gate column and its up column together, so the activation costs no kernel of its own.

    Returns:
        y [M, N] in x's dtype, or [M, F] with `glu`.
    """
    require_triton("gemv")
    M, K = x.shape
    N = weight.shape[0]
    assert 1 <= M <= MAX_ROWS, f"gemv takes 1..{MAX_ROWS} rows, got {M}"
    assert weight.dim() == 2 and weight.shape[1] == K and weight.is_contiguous(), "weight must be contiguous [N, K]"
    assert x.stride(1) == 1 and x.dtype == weight.dtype, "x must be [M, K] in the weight's dtype, K contiguous"
    assert not glu or (N % 2 == 0 and bias is None), "glu takes an even number of weight rows and no bias"
    y = x.new_empty(M, N // 2 if glu else N)
    return _launch(config or _config(x, weight, bias, y, glu), x, weight, bias, y, glu)


def _skinny(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the skinny-GEMM kernels serve x @ weight.T: 1..16 rows of 2-D fp16/bf16 input on a GPU (fp32 stays
    on cuBLAS, whose fp32 GEMMs the tests compare exactly with the reference)."""
    return (HAS_TRITON and x.is_cuda and x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS and x.stride(1) == 1
            and weight.is_contiguous() and x.dtype == weight.dtype and x.dtype in (torch.float16, torch.bfloat16))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` for the engine: the skinny-GEMM kernel where it serves (`_skinny`), cuBLAS otherwise."""
    return gemv(x, weight, bias) if _skinny(x, weight) else F.linear(x, weight, bias)


def linear_silu_mul(x: torch.Tensor, w13: torch.Tensor) -> torch.Tensor:
    """`silu_mul(F.linear(x, w13))` for the engine: SwiGLU over a fused [w1 | w3] weight, in one skinny-GEMM kernel
    where it serves (`gemv(glu=True)`, or cuBLAS and `silu_mul` if the tuner times those faster)."""
    if _skinny(x, w13):
        return gemv(x, w13, glu=True) if GLU_EPILOGUE else silu_mul(gemv(x, w13))
    return silu_mul(F.linear(x, w13))
