"""Triton kernels vs their PyTorch references.

Without CUDA the kernels run in Triton's CPU interpreter (fp32 and fp16, small sizes); tests marked `gpu` run
compiled in bf16 at serving sizes. Caches are poisoned with NaN wherever a kernel must not read (the tail of each
sequence's last block, a spare block that pads every block table) and outputs are pre-filled with NaN, so a
stray read or a missed write shows up as a NaN.
"""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`

from shusheng.deploy.kernels import (  # noqa: E402
    decode_num_splits,
    paged_decode_attention,
    paged_decode_attention_ref,
    paged_extend_attention,
    paged_extend_attention_ref,
    store_kv,
    store_kv_ref,
)
from shusheng.deploy.kernels._triton import HAS_TRITON  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable: the kernels cannot run")
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the references stay exact fp32 on GPU too
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def generators(seed):
    """(CPU generator for permutations, DEVICE generator for the big random tensors)."""
    return torch.Generator().manual_seed(seed), torch.Generator(DEVICE).manual_seed(seed)


def randn(*shape, dtype, gen):
    return torch.randn(shape, generator=gen, device=DEVICE).to(dtype)


def paged_cache(lens, block_size, KV, D, dtype, gens):
    """Random caches whose blocks are shuffled across sequences, plus block tables for `lens`.

    Returns k_cache, v_cache [num_blocks, block_size, KV, D] and block_tables int32 [B, max_blocks + 2]. Slots past
    each sequence's end and one spare block (which pads every table row) hold NaN.
    """
    n_blocks = [-(-L // block_size) for L in lens]
    num_blocks = sum(n_blocks) + 1
    shape = (num_blocks, block_size, KV, D)
    k_cache = randn(*shape, dtype=dtype, gen=gens[1])
    v_cache = randn(*shape, dtype=dtype, gen=gens[1])
    perm = torch.randperm(num_blocks, generator=gens[0]).tolist()  # physical blocks in random order, none used twice
    spare = perm.pop()
    k_cache[spare] = v_cache[spare] = float("nan")
    block_tables = torch.full((len(lens), max(n_blocks) + 2), spare, dtype=torch.int32)
    for b, (L, n) in enumerate(zip(lens, n_blocks, strict=True)):
        blocks = [perm.pop() for _ in range(n)]
        block_tables[b, :n] = torch.tensor(blocks, dtype=torch.int32)
        k_cache[blocks[-1], L - (n - 1) * block_size :] = float("nan")
        v_cache[blocks[-1], L - (n - 1) * block_size :] = float("nan")
    return k_cache, v_cache, block_tables.to(DEVICE)


# ---------------------------------------------------------------------------------------------------------------
# store_kv
# ---------------------------------------------------------------------------------------------------------------


def check_store_kv(N, KV, D, block_size, dtype, slot_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    num_blocks = 2 * N // block_size + 1  # a few slots left free
    H = 2 * KV
    qkv = torch.randn(N, (H + 2 * KV) * D, generator=gen).to(DEVICE, dtype)
    k = qkv[:, H * D : (H + KV) * D].view(N, KV, D)  # strided views, as the engine's fused qkv gives them
    v = qkv[:, (H + KV) * D :].view(N, KV, D)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:N]
    slots[::3] = -1  # padding tokens
    slots = slots.to(DEVICE, slot_dtype)
    k_cache = torch.randn(num_blocks, block_size, KV, D, generator=gen).to(DEVICE, dtype)
    v_cache = torch.randn(num_blocks, block_size, KV, D, generator=gen).to(DEVICE, dtype)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    store_kv_ref(k, v, k_ref, v_ref, slots)
    store_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)
    keep = slots >= 0
    assert torch.equal(k_cache.view(-1, KV, D)[slots[keep].long()], k[keep])
    assert keep.any() and not keep.all()


@needs_triton
@pytest.mark.parametrize(
    "dtype, slot_dtype",
    [(torch.float32, torch.int32), (torch.float16, torch.int64)],
)
def test_store_kv(dtype, slot_dtype):
    check_store_kv(N=13, KV=2, D=64, block_size=16, dtype=dtype, slot_dtype=slot_dtype, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------------------------------


def check_decode(H, KV, D, block_size, lens, num_splits, dtype, seed, max_context_len=None):
    gens = generators(seed)
    k_cache, v_cache, block_tables = paged_cache(lens, block_size, KV, D, dtype, gens)
    q = randn(len(lens), H, D, dtype=dtype, gen=gens[1])
    context_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    args = (q, k_cache, v_cache, block_tables, context_lens, D**-0.5)
    ref = paged_decode_attention_ref(*args)
    for _ in range(2):  # the split merge's arrival counters are re-armed by each launch
        out = torch.full_like(q, float("nan"))
        res = paged_decode_attention(*args, num_splits=num_splits, out=out, max_context_len=max_context_len)
        assert res is out
        assert not out.isnan().any(), "unwritten or poisoned output"
        assert rel_err(out, ref) < TOL[dtype]


@needs_triton
@pytest.mark.parametrize(
    "H, KV, D, block_size, lens, num_splits, dtype",
    [
        (4, 4, 64, 16, [1, 16, 17, 32, 33, 48, 49], 1, torch.float32),  # block boundaries, G = 1
        (8, 4, 128, 32, [5, 32, 33, 130], 2, torch.float16),  # G = 2
        (8, 2, 64, 16, [1, 17, 200, 48], 3, torch.float32),  # G = 4; short rows leave splits empty
        (8, 1, 128, 16, [300, 1, 65, 16], 4, torch.float16),  # G = 8
        (8, 2, 64, 32, [1, 16, 49, 1100], None, torch.float32),  # automatic: 4 splits (max read from the lens)
        (6, 2, 32, 16, [7, 150], 2, torch.float32),  # G = 3 (not a power of two), D = 32
        (4, 2, 256, 16, [80, 1], 2, torch.float16),  # D = 256
    ],
)
def test_paged_decode_attention(H, KV, D, block_size, lens, num_splits, dtype):
    check_decode(H, KV, D, block_size, lens, num_splits, dtype, seed=len(lens) * H + D)


def test_decode_num_splits():
    assert decode_num_splits(64, 8, 4096, num_sms=132) == 1  # 512 programs already fill the GPU
    assert decode_num_splits(1, 8, 500, num_sms=132) == 1  # short context
    assert decode_num_splits(1, 8, 600, num_sms=132) == 2  # at most 2 splits of >= 256 tokens
    assert decode_num_splits(4, 8, 4096, num_sms=132) == 9  # ceil(2 * 132 / 32)
    assert decode_num_splits(1, 8, 32768, num_sms=132) == 16  # capped


# ---------------------------------------------------------------------------------------------------------------
# extend
# ---------------------------------------------------------------------------------------------------------------


def check_extend(H, KV, D, block_size, prefixes, q_lens, dtype, seed):
    gens = generators(seed)
    lens = [p + n for p, n in zip(prefixes, q_lens, strict=True)]
    k_cache, v_cache, block_tables = paged_cache(lens, block_size, KV, D, dtype, gens)
    q = randn(sum(q_lens), H, D, dtype=dtype, gen=gens[1])
    cu = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(DEVICE)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    args = (q, k_cache, v_cache, block_tables, cu, context_lens, max(q_lens), D**-0.5)
    ref = paged_extend_attention_ref(*args)
    out = torch.full_like(q, float("nan"))
    assert paged_extend_attention(*args, out=out) is out
    assert not out.isnan().any(), "unwritten or poisoned output"
    assert rel_err(out, ref) < TOL[dtype]


@needs_triton
@pytest.mark.parametrize(
    "H, KV, D, block_size, prefixes, q_lens, dtype",
    [
        (4, 4, 64, 16, [37, 0], [20, 16], torch.float32),  # prefix hit (37 cached + 20 new) and pure prefill
        (8, 4, 128, 32, [0, 0, 0], [33, 16, 1], torch.float16),  # pure prefill, a 1-token context
        (8, 2, 64, 16, [10, 0, 63, 15], [1, 40, 1, 17], torch.float32),  # decode rows mixed with long rows
        (8, 1, 128, 16, [100, 0, 16], [1, 49, 32], torch.float16),  # G = 8; a mask-free prefix tile
        (2, 1, 64, 32, [5], [150], torch.float32),  # several query tiles and mask-free key tiles
        (6, 2, 32, 16, [20, 0], [50, 3], torch.float32),  # G = 3 (not a power of two), D = 32
        (4, 2, 256, 16, [40, 0], [30, 1], torch.float16),  # D = 256
    ],
)
def test_paged_extend_attention(H, KV, D, block_size, prefixes, q_lens, dtype):
    check_extend(H, KV, D, block_size, prefixes, q_lens, dtype, seed=sum(q_lens) + H)


# ---------------------------------------------------------------------------------------------------------------
# without triton
# ---------------------------------------------------------------------------------------------------------------


def test_references_import_without_triton():
    """A CPU-only install has no triton: the modules must import and the references must run."""
    code = """
import sys, torch
sys.modules["triton"] = None  # `import triton` now raises ImportError
from shusheng.deploy import kernels as K
assert not K.HAS_TRITON
kc = torch.randn(2, 16, 1, 32); vc = torch.randn(2, 16, 1, 32); bt = torch.tensor([[1, 0]], dtype=torch.int32)
K.store_kv_ref(torch.ones(1, 1, 32), torch.ones(1, 1, 32), kc, vc, torch.tensor([17]))
assert kc[1, 1].eq(1).all()
lens = torch.tensor([20], dtype=torch.int32)
o = K.paged_decode_attention_ref(torch.randn(1, 2, 32), kc, vc, bt, lens, 0.2)
o = K.paged_extend_attention_ref(torch.randn(3, 2, 32), kc, vc, bt, torch.tensor([0, 3]), lens, 3, 0.2)
assert o.isfinite().all()
try:
    K.paged_decode_attention(torch.randn(1, 2, 32), kc, vc, bt, lens, 0.2)
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
def test_store_kv_gpu_bf16():
    check_store_kv(N=512, KV=8, D=128, block_size=16, dtype=torch.bfloat16, slot_dtype=torch.int32, seed=1)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "B, H, KV, D, block_size, num_splits",
    [
        (64, 32, 8, 128, 16, None),  # automatic: the grid is full, no split
        (64, 32, 8, 128, 16, 4),
        (64, 16, 16, 64, 32, 1),  # G = 1
        (4, 32, 4, 128, 16, None),  # automatic: few programs, long contexts -> split
        (3, 64, 8, 128, 32, 16),  # G = 8
    ],
)
def test_paged_decode_attention_gpu(B, H, KV, D, block_size, num_splits):
    gen = torch.Generator().manual_seed(B + H + KV)
    lens = torch.randint(1, 4097, (B,), generator=gen).tolist()
    lens[: min(B, 4)] = [4096, 1, 16, 4095][: min(B, 4)]
    if num_splits is None and B == 4:
        assert decode_num_splits(B, KV, max(lens), torch.cuda.get_device_properties(0).multi_processor_count) > 1
    check_decode(H, KV, D, block_size, lens, num_splits, torch.bfloat16, seed=B * KV, max_context_len=max(lens))


@pytest.mark.gpu
@pytest.mark.parametrize("H, KV, D, block_size", [(32, 8, 128, 16), (32, 4, 64, 32), (16, 16, 128, 16)])
def test_paged_extend_attention_gpu(H, KV, D, block_size):
    gen = torch.Generator().manual_seed(H * KV + D)
    B = 12
    prefixes = torch.randint(0, 2048, (B,), generator=gen).tolist()
    q_lens = torch.randint(1, 513, (B,), generator=gen).tolist()
    prefixes[:3], q_lens[:3] = [0, 37, 4000], [1000, 1, 1]
    check_extend(H, KV, D, block_size, prefixes, q_lens, torch.bfloat16, seed=B)


@pytest.mark.gpu
def test_paged_decode_attention_cuda_graph():
    """Captured once with fixed num_splits and out; replays see new context lengths without a re-capture."""
    B, H, KV, D, block_size = 8, 32, 8, 128, 16
    gens = generators(7)
    lens = [4096] * B
    k_cache, v_cache, block_tables = paged_cache(lens, block_size, KV, D, torch.bfloat16, gens)
    q = randn(B, H, D, dtype=torch.bfloat16, gen=gens[1])
    context_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out = torch.empty_like(q)
    args = (q, k_cache, v_cache, block_tables, context_lens, D**-0.5)
    paged_decode_attention(*args, num_splits=4, out=out)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paged_decode_attention(*args, num_splits=4, out=out)
    for new_lens in ([1, 17, 4096, 100, 2048, 33, 48, 4000], [4096] * B):
        context_lens.copy_(torch.tensor(new_lens, dtype=torch.int32))
        out.fill_(float("nan"))
        graph.replay()
        assert not out.isnan().any()
        assert rel_err(out, paged_decode_attention_ref(*args)) < TOL[torch.bfloat16]
