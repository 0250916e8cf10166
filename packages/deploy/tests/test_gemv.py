"""The skinny-GEMM decode kernel (`kernels/gemv.py`) against `F.linear`.

Without CUDA the kernel runs in Triton's CPU interpreter (fp32 and fp16, odd sizes, every launch configuration);
tests marked `gpu` run it compiled in bf16 at serving shapes, with the configuration picked by timing. Outputs are
allocated by the kernel wrapper; a missed write shows up as garbage against the reference.
"""

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`

from shusheng.deploy.kernels._triton import HAS_TRITON  # noqa: E402
from shusheng.deploy.kernels.gemv import CUBLAS, MAX_ROWS, candidates, gemv, linear, linear_silu_mul  # noqa: E402
from shusheng.deploy.kernels.swiglu import silu_mul_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable: the kernel cannot run")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_err(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def operands(M, N, K, dtype, bias, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(M, K, generator=g, device=DEVICE).to(dtype)
    w = (torch.randn(N, K, generator=g, device=DEVICE) / K**0.5).to(dtype)
    b = torch.randn(N, generator=g, device=DEVICE).to(dtype) if bias else None
    return x, w, b


def reference(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (1, 37, 300), (1, 64, 512), (3, 50, 129), (8, 33, 640), (16, 17, 96)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_linear(M, N, K, dtype, bias):
    x, w, b = operands(M, N, K, dtype, bias)
    out = gemv(x, w, b)
    assert out.shape == (M, N) and out.dtype == dtype
    assert rel_err(out, reference(x, w, b)) < TOL[dtype]


@needs_triton
@pytest.mark.parametrize("M", [1, 5])
def test_every_candidate_configuration_is_correct(M):
    """The timing picks any candidate on a GPU, so each must be right, also where N and K are not tile multiples
    and with split-K (whose counters must be re-armed: each configuration runs twice)."""
    x, w, b = operands(M, 70, 1100, torch.float16, bias=True, seed=1)
    ref = reference(x, w, b)
    assert any(c[5] > 1 for c in candidates(M)) and (M > 1 or any(c[0] == "rows" for c in candidates(M)))
    for cfg in candidates(M):
        for _ in range(2):
            assert rel_err(gemv(x, w, b, config=cfg), ref) < TOL[torch.float16], cfg


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("M,F_,K", [(1, 35, 300), (1, 64, 1100), (4, 35, 129), (16, 8, 96)])
def test_glu_epilogue_is_silu_mul_of_the_product(M, F_, K, dtype):
    """`gemv(glu=True)` over a [gate | up] weight equals `silu_mul` of the plain product with the same configuration
    (its rounding points: the GEMM output, silu, the product), for every candidate, odd F and split-K included."""
    x, w, _ = operands(M, 2 * F_, K, dtype, bias=False, seed=M + F_)
    for cfg in candidates(M):
        for _ in range(2):  # split-K counters re-armed
            out = gemv(x, w, config=cfg, glu=True)
            want = silu_mul_ref(gemv(x, w, config=cfg))
            assert out.shape == (M, F_) and out.dtype == dtype
            assert rel_err(out, want) < TOL[dtype], cfg
            if dtype == torch.float16:
                assert (out != want).float().mean().item() < 0.05, ("rounding points differ", cfg)
    ref = silu_mul_ref(reference(x, w, None)).to(dtype)
    assert rel_err(linear_silu_mul(x, w), ref) < 2 * TOL[dtype]
    with pytest.raises(AssertionError, match="even"):
        gemv(x, w[:-1].contiguous(), glu=True)


@needs_triton
def test_strided_rows_of_x():
    """x may be a row slice of a wider buffer (the hidden states of the graph's padded batch)."""
    big, w, _ = operands(4, 40, 256, torch.float16, bias=False, seed=2)
    wide = torch.cat([big, big], dim=1)[:, :256]
    assert rel_err(gemv(wide, w), reference(big, w, None)) < TOL[torch.float16]


def test_linear_falls_back_outside_the_kernel_domain():
    """More rows than MAX_ROWS, fp32 and CPU tensors all go to F.linear, exactly."""
    x, w, b = operands(MAX_ROWS + 1, 24, 40, torch.float32, bias=True)
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    x1 = x[:1]
    if not x1.is_cuda:
        assert torch.equal(linear(x1, w, b), F.linear(x1, w, b))


def test_gemv_rejects_bad_shapes():
    if not HAS_TRITON:
        pytest.skip("triton is not importable")
    x, w, _ = operands(MAX_ROWS + 1, 8, 16, torch.float32, bias=False)
    with pytest.raises(AssertionError, match="rows"):
        gemv(x, w)
    with pytest.raises(AssertionError, match="contiguous"):
        gemv(x[:2], w.t().contiguous().t())


@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 2, 16])
def test_gpu_every_candidate_bf16(M):
    """Compiled, in bf16, at a serving shape: every candidate the tuner may pick (no timing: quick)."""
    x, w, _ = operands(M, 4096, 2048, torch.bfloat16, bias=False, seed=3)
    ref = reference(x, w, None)
    for cfg in candidates(M):
        assert rel_err(gemv(x, w, config=cfg), ref) < TOL[torch.bfloat16], cfg


@pytest.mark.gpu
def test_gpu_linear_tunes_once_and_stays_right():
    """`linear` times cuBLAS and the candidates for a new shape, keeps the fastest, and is right either way."""
    from shusheng.deploy.kernels.gemv import CUBLAS, _picked

    x, w, b = operands(1, 2048, 1024, torch.bfloat16, bias=True, seed=4)
    out = linear(x, w, b)
    assert rel_err(out, reference(x, w, b)) < TOL[torch.bfloat16]
    picked = [cfg for key, cfg in _picked.items() if key[2:4] == (2048, 1024)]
    assert len(picked) == 1 and picked[0] in [CUBLAS, *candidates(1)]
    assert torch.equal(linear(x, w, b), out)  # the same configuration again, deterministic


@pytest.mark.gpu
def test_gpu_split_k_in_a_cuda_graph_replays_right():
    """A decode step replays its graph over and over: split-K's arrival counters must be re-armed by the kernel."""
    x, w, _ = operands(4, 2048, 8192, torch.bfloat16, bias=False, seed=5)
    cfg = next(c for c in candidates(4) if c[5] > 1)
    gemv(x, w, config=cfg)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gemv(x, w, config=cfg)
    for seed in range(3):
        x.copy_(operands(4, 2048, 8192, torch.bfloat16, bias=False, seed=10 + seed)[0])
        graph.replay()
        assert rel_err(out, reference(x, w, None)) < TOL[torch.bfloat16]



def _decode_chain(x, weights, cfg):
    """GEMM, RMSNorm, GEMM, SwiGLU, GEMM: the kernels of a decode layer's MLP half, each reading the last's output."""
    from shusheng.deploy.kernels import rms_norm, silu_mul

    w1, w13, w2, norm_w = weights
    h = rms_norm(gemv(x, w1, config=cfg), norm_w, 1e-6)
    return gemv(silu_mul(gemv(h, w13, config=cfg)), w2, config=cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 4, 16])
def test_gpu_glu_epilogue_bf16(M):
    """At InternLM2-7B's w1|w3 shape in bf16, every configuration (and the tuned pick) with SwiGLU in its epilogue
    gives exactly `silu_mul` of the same configuration's product; cuBLAS + silu_mul is close."""
    from shusheng.deploy.kernels import silu_mul

    x, w, _ = operands(M, 2 * 14336, 4096, torch.bfloat16, bias=False, seed=M)
    for cfg in candidates(M):
        assert torch.equal(gemv(x, w, config=cfg, glu=True), silu_mul(gemv(x, w, config=cfg))), cfg
    ref = silu_mul(gemv(x, w, config=CUBLAS))
    assert rel_err(linear_silu_mul(x, w), ref) < TOL[torch.bfloat16]


@pytest.mark.gpu
def test_gpu_programmatic_dependent_launch_chain_in_a_graph_equals_plain_launches():
    """The chain captured with programmatic dependent launch: each kernel starts early, prefetches its weights and
    waits for the one before. Replays with new inputs must give exactly what plain launches give, for every
    candidate configuration (a missing wait reads stale data)."""
    from shusheng.deploy.kernels._triton import set_pdl, use_pdl

    set_pdl(True)
    try:
        if not use_pdl(torch.device("cuda")):
            pytest.skip("programmatic dependent launch needs a Hopper or newer GPU and triton's gdc ops")
        for M in (1, 4):
            weights = [operands(M, n, k, torch.bfloat16, bias=False, seed=20 + i)[1]
                       for i, (n, k) in enumerate([(2048, 2048), (8192, 2048), (2048, 4096)])]
            weights.append(torch.rand(2048, device="cuda", dtype=torch.bfloat16) + 0.5)
            for cfg in candidates(M):
                x = operands(M, 2048, 2048, torch.bfloat16, bias=False, seed=30)[0]
                _decode_chain(x, weights, cfg)  # compile outside the capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = _decode_chain(x, weights, cfg)
                for seed in range(3):
                    x.copy_(operands(M, 2048, 2048, torch.bfloat16, bias=False, seed=31 + seed)[0])
                    graph.replay()
                    set_pdl(False)
                    want = _decode_chain(x, weights, cfg)
                    set_pdl(True)
                    assert torch.equal(out, want), (M, cfg, seed)
    finally:
        set_pdl(None)
