"""Fused elementwise kernels (RMSNorm, add + RMSNorm, qkv rotary, SwiGLU) vs their references, and the references
vs the model's own modules.

Without CUDA the kernels run in Triton's CPU interpreter (fp32 and fp16, small and non-power-of-two sizes); tests
marked `gpu` run compiled in bf16 at serving sizes. Outputs are pre-filled with NaN, so a missed write shows up.
"""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`

from shusheng.deploy.kernels._triton import HAS_TRITON  # noqa: E402
from shusheng.deploy.kernels.fused_norm import (  # noqa: E402
    fused_add_rms_norm,
    fused_add_rms_norm_ref,
    rms_norm,
    rms_norm_ref,
)
from shusheng.deploy.kernels.rotary import qkv_rotary, qkv_rotary_ref  # noqa: E402
from shusheng.deploy.kernels.swiglu import silu_mul, silu_mul_ref  # noqa: E402
from shusheng.model import ModelConfig, build_model  # noqa: E402
from shusheng.model.attention import AttentionBackend  # noqa: E402
from shusheng.model.model import FeedForward, RMSNorm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable: the kernels cannot run")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.float16]
SIZES_N = [1, 7, 33]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def randn(*shape, dtype, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, device=DEVICE) * scale).to(dtype)


def nan_like(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, float("nan"))


def inv_freq(D: int, theta: float = 1e6) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, D, 2, device=DEVICE).float() / D))


def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """Fully written, close to the reference, and in half dtypes almost always bit-identical to it: the kernels
    round where the model rounds, so only a rare last-bit flip (exp or cos one fp32 ulp apart) may differ."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert not out.isnan().any(), "the kernel left part of its output unwritten"
    assert rel_err(out, ref) < TOL[dtype]
    if dtype != torch.float32:
        assert (out != ref).float().mean().item() < 0.05, "rounding points differ from the reference"


# ---------------------------------------------------------------------------------------------------------------
# RMSNorm
# ---------------------------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 96, 200])
@pytest.mark.parametrize("N", SIZES_N)
def test_rms_norm(N, D, dtype):
    gen = torch.Generator(DEVICE).manual_seed(N * 1000 + D)
    x = randn(N, D, dtype=dtype, gen=gen, scale=3.0)
    w = randn(D, dtype=dtype, gen=gen)
    out = nan_like(x)
    assert rms_norm(x, w, 1e-5, out=out) is out
    check(out, rms_norm_ref(x, w, 1e-5), dtype)


@needs_triton
def test_rms_norm_layouts():
    """Leading dims are flattened, the row stride of x is free, and out may alias x."""
    gen = torch.Generator(DEVICE).manual_seed(5)
    x = randn(2, 3, 96, dtype=torch.float32, gen=gen)
    w = randn(96, dtype=torch.float32, gen=gen)
    check(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6), torch.float32)
    wide = randn(5, 160, dtype=torch.float32, gen=gen)
    x = wide[:, 32:128]  # [5, 96], row stride 160
    check(rms_norm(x, w, 1e-6, out=nan_like(x)), rms_norm_ref(x, w, 1e-6), torch.float32)
    expected, before = rms_norm_ref(x, w, 1e-6), wide.clone()
    rms_norm(x, w, 1e-6, out=x)
    check(x, expected, torch.float32)
    assert torch.equal(wide[:, :32], before[:, :32]) and torch.equal(wide[:, 128:], before[:, 128:])


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 96, 200])
@pytest.mark.parametrize("N", SIZES_N)
def test_fused_add_rms_norm(N, D, dtype):
    gen = torch.Generator(DEVICE).manual_seed(N * 1000 + D + 1)
    x = randn(N, D, dtype=dtype, gen=gen)
    residual = randn(N, D, dtype=dtype, gen=gen, scale=4.0)
    w = randn(D, dtype=dtype, gen=gen)
    expected_sum = x + residual  # the block's `h + attn_out`, in the activation dtype
    ref_normed, _ = fused_add_rms_norm_ref(x, residual.clone(), w, 1e-5)
    out = nan_like(x)
    normed, new_residual = fused_add_rms_norm(x, residual, w, 1e-5, out=out)
    assert normed is out and new_residual is residual  # the sum is written in place
    torch.testing.assert_close(residual, expected_sum, rtol=0, atol=0)
    check(normed, ref_normed, dtype)


def test_rms_norm_refs_match_model():
    """The references are the model's RMSNorm module (and the block's residual add before it)."""
    gen = torch.Generator().manual_seed(0)
    D, eps = 96, 1e-5
    norm = RMSNorm(D, eps)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(D, generator=gen))
        x = torch.randn(7, 3, D, generator=gen) * 2
        attn_out = torch.randn(7, 3, D, generator=gen)
        torch.testing.assert_close(rms_norm_ref(x, norm.weight, eps), norm(x), rtol=1e-6, atol=1e-6)
        h = x + attn_out
        normed, residual = fused_add_rms_norm_ref(attn_out, x.clone(), norm.weight, eps)
        torch.testing.assert_close(residual, h, rtol=0, atol=0)
        torch.testing.assert_close(normed, norm(h), rtol=1e-6, atol=1e-6)
        norm16 = norm.to(torch.bfloat16)  # same rounding points in a half dtype: bit-identical
        x16 = x.to(torch.bfloat16)
        assert torch.equal(rms_norm_ref(x16, norm16.weight, eps), norm16(x16))


# ---------------------------------------------------------------------------------------------------------------
# Rotary
# ---------------------------------------------------------------------------------------------------------------


class RecordingAttention(AttentionBackend):
    """Records what the attention layer feeds its backend; returns zeros."""

    def forward(self, q, k, v, layer):
        self.q, self.k, self.v = q, k, v
        return torch.zeros_like(q)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("KV, G, D", [(2, 2, 64), (1, 3, 96), (3, 1, 200)])
@pytest.mark.parametrize("N", SIZES_N)
def test_qkv_rotary(N, KV, G, D, dtype):
    gen = torch.Generator(DEVICE).manual_seed(N * 1000 + KV * 100 + G * 10 + D)
    W = KV * (G + 2) * D
    wide = randn(N, W + 16, dtype=dtype, gen=gen)
    qkv = wide[:, 8 : 8 + W]  # a row stride != W, as a slice of a larger projection would have
    positions = torch.randint(0, 40000, (N,), generator=gen, device=DEVICE)  # large angles: trig range reduction
    positions[0] = 0
    freq = inv_freq(D)
    q_out = torch.full((N, KV * G, D), float("nan"), dtype=dtype, device=DEVICE)
    k_out = torch.full((N, KV, D), float("nan"), dtype=dtype, device=DEVICE)
    q, k, v = qkv_rotary(qkv, positions, freq, KV, G, D, out=(q_out, k_out))
    assert q is q_out and k is k_out
    q_ref, k_ref, v_ref = qkv_rotary_ref(qkv, positions, freq, KV, G, D)
    check(q, q_ref, dtype)
    check(k, k_ref, dtype)
    assert v.data_ptr() == qkv.data_ptr() + (G + 1) * D * qkv.element_size() and torch.equal(v, v_ref)
    q2, k2, _ = qkv_rotary(qkv, positions, freq, KV, G, D)  # allocating path
    assert q2.is_contiguous() and k2.is_contiguous()
    assert torch.equal(q2, q) and torch.equal(k2, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("KV, G, D", [(2, 2, 64), (1, 3, 96), (8, 2, 128)])
@pytest.mark.parametrize("N", SIZES_N)
def test_qkv_rotary_writes_the_paged_cache(N, KV, G, D, dtype):
    """With `cache=`, rotated k and v land at each token's slot exactly as `store_kv` puts them (padding tokens,
    slot -1, nowhere) and the rest of the cache is untouched."""
    gen = torch.Generator(DEVICE).manual_seed(7 * N + KV + G + D)
    qkv = randn(N, KV * (G + 2) * D, dtype=dtype, gen=gen)
    positions = torch.randint(0, 4000, (N,), generator=gen, device=DEVICE)
    freq = inv_freq(D)
    num_blocks, block = 10, 4  # 40 slots for up to 33 tokens
    slots = torch.randperm(num_blocks * block, generator=gen, device=DEVICE)[:N].to(torch.int32)
    slots[N // 2] = -1  # a padding row
    caches = [randn(num_blocks, block, KV, D, dtype=dtype, gen=gen) for _ in range(2)]
    ref_caches = [c.clone() for c in caches]
    q, k, v = qkv_rotary(qkv, positions, freq, KV, G, D, cache=(*caches, slots))
    q_ref, k_ref, v_ref = qkv_rotary_ref(qkv, positions, freq, KV, G, D, cache=(*ref_caches, slots))
    check(q, q_ref, dtype)
    check(k, k_ref, dtype)
    keep = slots >= 0
    written = set(slots[keep].tolist())
    untouched = [s for s in range(num_blocks * block) if s not in written]
    for c, r in zip(caches, ref_caches, strict=True):
        assert torch.equal(c.view(-1, KV, D)[untouched], r.view(-1, KV, D)[untouched])
    assert torch.equal(caches[1], ref_caches[1])  # v is copied, not computed
    # k rows equal the kernel's returned k exactly, and the reference's within rounding
    assert torch.equal(caches[0].view(-1, KV, D)[slots[keep].long()], k[keep])
    check(caches[0], ref_caches[0], dtype)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # tiny: 4 heads, 2 KV heads, head_dim 16, plain rope
        dict(hidden_size=96, num_heads=6, num_kv_heads=2, rope_type="dynamic", rope_factor=2.0, qkv_bias=True),
        dict(hidden_size=64, num_heads=2, num_kv_heads=2, rope_type="linear", rope_factor=4.0),  # head_dim 32, G=1
    ],
)
def test_qkv_rotary_ref_matches_model(overrides):
    """qkv_rotary_ref on the wqkv output equals the q, k, v that Attention.forward hands its backend."""
    cfg = ModelConfig.from_name("tiny", **overrides)
    model = build_model(cfg, seed=0)
    attn = model.layers[0].attention
    gen = torch.Generator().manual_seed(1)
    T = 9
    x = torch.randn(1, T, cfg.hidden_size, generator=gen)
    positions = torch.randint(0, 3 * cfg.max_position_embeddings, (1, T), generator=gen)
    recorder = RecordingAttention()
    with torch.no_grad():
        cos, sin = model.rotary(positions, x.dtype)
        attn(x, cos, sin, recorder)
        qkv = attn.wqkv(x)[0]  # [T, KV * (G + 2) * D]
        freq = model.rotary.inv_freq(positions)
    args = (qkv, positions[0], freq, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim)
    q, k, v = qkv_rotary_ref(*args)
    for got, want in ((q, recorder.q[0]), (k, recorder.k[0]), (v, recorder.v[0])):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    if HAS_TRITON:  # and the kernel, on the model's own tensors
        q, k, _ = qkv_rotary(*args)
        assert rel_err(q, recorder.q[0]) < TOL[torch.float32] and rel_err(k, recorder.k[0]) < TOL[torch.float32]


# ---------------------------------------------------------------------------------------------------------------
# SwiGLU
# ---------------------------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("F", [64, 96, 200])
@pytest.mark.parametrize("N", SIZES_N)
def test_silu_mul(N, F, dtype):
    gen = torch.Generator(DEVICE).manual_seed(N * 1000 + F + 2)
    gate_up = randn(N, 2 * F, dtype=dtype, gen=gen, scale=3.0)
    out = torch.full((N, F), float("nan"), dtype=dtype, device=DEVICE)
    assert silu_mul(gate_up, out=out) is out
    check(out, silu_mul_ref(gate_up), dtype)


@needs_triton
def test_silu_mul_layouts():
    """Leading dims are flattened; strided rows in and out; F larger than one program's block."""
    gen = torch.Generator(DEVICE).manual_seed(3)
    gate_up = randn(2, 3, 2 * 1100, dtype=torch.float32, gen=gen)
    check(silu_mul(gate_up), silu_mul_ref(gate_up), torch.float32)
    wide = randn(4, 2 * 96 + 8, dtype=torch.float32, gen=gen)
    gate_up = wide[:, 8:]
    out = torch.full((4, 128), float("nan"), device=DEVICE)[:, :96]
    silu_mul(gate_up, out=out)
    check(out, silu_mul_ref(gate_up), torch.float32)


def test_silu_mul_ref_matches_model():
    """w2(silu_mul_ref([w1 x | w3 x])) is the model's FeedForward."""
    cfg = ModelConfig.from_name("tiny")
    ff = FeedForward(cfg)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in ff.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        x = torch.randn(7, cfg.hidden_size, generator=gen)
        gate_up = torch.cat((ff.w1(x), ff.w3(x)), dim=-1)  # what one fused [w1; w3] GEMM produces
        torch.testing.assert_close(ff.w2(silu_mul_ref(gate_up)), ff(x), rtol=1e-6, atol=1e-6)
        ff16, x16 = ff.to(torch.bfloat16), x.to(torch.bfloat16)  # same rounding points: bit-identical activation
        gate_up16 = torch.cat((ff16.w1(x16), ff16.w3(x16)), dim=-1)
        assert torch.equal(silu_mul_ref(gate_up16), torch.nn.functional.silu(ff16.w1(x16)) * ff16.w3(x16))


# ---------------------------------------------------------------------------------------------------------------
# without triton
# ---------------------------------------------------------------------------------------------------------------


def test_references_import_without_triton():
    """A CPU-only install has no triton: the modules must import, the references run, the kernels refuse."""
    code = """
import sys, torch
sys.modules["triton"] = None  # `import triton` now raises ImportError
from shusheng.deploy.kernels import _triton, fused_norm, rotary, swiglu
assert not _triton.HAS_TRITON
x, w = torch.randn(3, 8), torch.ones(8)
assert fused_norm.rms_norm_ref(x, w, 1e-5).shape == (3, 8)
fused_norm.fused_add_rms_norm_ref(x, torch.zeros(3, 8), w, 1e-5)
q, k, v = rotary.qkv_rotary_ref(torch.randn(3, 2 * 4 * 8), torch.arange(3), torch.ones(4), 2, 2, 8)
assert q.shape == (3, 4, 8) and k.shape == v.shape == (3, 2, 8)
assert swiglu.silu_mul_ref(x).shape == (3, 4)
for call in (lambda: fused_norm.rms_norm(x, w, 1e-5), lambda: swiglu.silu_mul(x),
             lambda: fused_norm.fused_add_rms_norm(x, x.clone(), w, 1e-5),
             lambda: rotary.qkv_rotary(torch.randn(3, 64), torch.arange(3), torch.ones(4), 2, 2, 8)):
    try:
        call()
    except RuntimeError as e:
        assert "triton" in str(e)
    else:
        raise AssertionError("expected RuntimeError")
"""
    if importlib.util.find_spec("shusheng.deploy") is None:
        pytest.skip("shusheng-deploy is not installed in this interpreter")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------------------------------------------
# GPU, bf16, serving sizes
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("N", [1, 37, 4096])
@pytest.mark.parametrize("D", [2048, 4096, 6144])
def test_rms_norm_gpu_bf16(N, D):
    gen = torch.Generator(DEVICE).manual_seed(N + D)
    x = randn(N, D, dtype=torch.bfloat16, gen=gen, scale=3.0)
    residual = randn(N, D, dtype=torch.bfloat16, gen=gen, scale=10.0)
    w = randn(D, dtype=torch.bfloat16, gen=gen)
    check(rms_norm(x, w, 1e-5, out=nan_like(x)), rms_norm_ref(x, w, 1e-5), torch.bfloat16)
    ref_normed, ref_residual = fused_add_rms_norm_ref(x, residual.clone(), w, 1e-5)
    normed, residual = fused_add_rms_norm(x, residual, w, 1e-5, out=nan_like(x))
    assert torch.equal(residual, ref_residual)
    check(normed, ref_normed, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("N", [1, 37, 4096])
@pytest.mark.parametrize("KV, G, D", [(8, 2, 128), (8, 4, 128), (8, 6, 128), (2, 8, 64)])
def test_qkv_rotary_gpu_bf16(N, KV, G, D):
    gen = torch.Generator(DEVICE).manual_seed(N + KV * G)
    qkv = randn(N, KV * (G + 2) * D, dtype=torch.bfloat16, gen=gen)
    positions = torch.randint(0, 32768, (N,), generator=gen, device=DEVICE)
    freq = inv_freq(D)
    out = (torch.full((N, KV * G, D), float("nan"), dtype=torch.bfloat16, device=DEVICE),
           torch.full((N, KV, D), float("nan"), dtype=torch.bfloat16, device=DEVICE))
    q, k, _ = qkv_rotary(qkv, positions, freq, KV, G, D, out=out)
    q_ref, k_ref, _ = qkv_rotary_ref(qkv, positions, freq, KV, G, D)
    # Angles up to 32k radians: fp32 cos/sin of the kernel and of torch differ in their last bits, so bf16 results
    # flip rounding often. The property that matters: the kernel is as close to the exact (float64) rotation as
    # the PyTorch reference is.
    check_rotary((q, k), (q_ref, k_ref), _rotary_float64(qkv, positions, freq, KV, G, D))


def check_rotary(got_qk, ref_qk, exact_qk) -> None:
    for got, ref, exact in zip(got_qk, ref_qk, exact_qk, strict=True):
        assert not got.isnan().any(), "the kernel left part of its output unwritten"
        assert rel_err(got, ref) < TOL[torch.bfloat16]
        assert rel_err(got, exact) <= 1.1 * rel_err(ref, exact) + 1e-4


def _rotary_float64(qkv, positions, freq, KV, G, D):
    x = qkv.double().view(len(qkv), KV, G + 2, D)
    q, k = x[:, :, :G].reshape(len(qkv), KV * G, D), x[:, :, G]
    ang = positions[:, None].double() * freq.double()
    emb = torch.cat((ang, ang), dim=-1)[:, None, :]
    cos, sin = emb.cos(), emb.sin()

    def rope(t):
        t1, t2 = t.chunk(2, dim=-1)
        return t * cos + torch.cat((-t2, t1), dim=-1) * sin

    return rope(q), rope(k)


@pytest.mark.gpu
@pytest.mark.parametrize("N", [1, 37, 4096])
@pytest.mark.parametrize("F", [8192, 14336])
def test_silu_mul_gpu_bf16(N, F):
    gen = torch.Generator(DEVICE).manual_seed(N + F)
    gate_up = randn(N, 2 * F, dtype=torch.bfloat16, gen=gen, scale=3.0)
    out = torch.full((N, F), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    check(silu_mul(gate_up, out=out), silu_mul_ref(gate_up), torch.bfloat16)


@pytest.mark.gpu
def test_fused_kernels_cuda_graph():
    """One decode step's elementwise chain, captured once, replays on new inputs (no host syncs inside)."""
    N, D, KV, G, Dh, F = 8, 2048, 8, 2, 128, 8192
    dt = torch.bfloat16
    gen = torch.Generator(DEVICE).manual_seed(0)
    x, residual = randn(N, D, dtype=dt, gen=gen), randn(N, D, dtype=dt, gen=gen)
    qkv, gate_up = randn(N, KV * (G + 2) * Dh, dtype=dt, gen=gen), randn(N, 2 * F, dtype=dt, gen=gen)
    w, positions, freq = randn(D, dtype=dt, gen=gen), torch.zeros(N, dtype=torch.long, device=DEVICE), inv_freq(Dh)
    normed, act = torch.empty_like(x), torch.empty(N, F, dtype=dt, device=DEVICE)
    q, k = torch.empty(N, KV * G, Dh, dtype=dt, device=DEVICE), torch.empty(N, KV, Dh, dtype=dt, device=DEVICE)

    def step():
        fused_add_rms_norm(x, residual, w, 1e-5, out=normed)
        qkv_rotary(qkv, positions, freq, KV, G, Dh, out=(q, k))
        silu_mul(gate_up, out=act)

    step()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for t in (x, residual, qkv, gate_up):
        t.copy_(randn(*t.shape, dtype=dt, gen=gen))
    positions.copy_(torch.randint(0, 32768, (N,), generator=gen, device=DEVICE))
    ref_normed, ref_residual = fused_add_rms_norm_ref(x, residual.clone(), w, 1e-5)
    q_ref, k_ref, _ = qkv_rotary_ref(qkv, positions, freq, KV, G, Dh)
    for t in (normed, q, k, act):
        t.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(residual, ref_residual)
    check(normed, ref_normed, dt)
    check_rotary((q, k), (q_ref, k_ref), _rotary_float64(qkv, positions, freq, KV, G, Dh))  # angles up to 32k
    check(act, silu_mul_ref(gate_up), dt)
