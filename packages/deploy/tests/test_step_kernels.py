"""The decode step's bookkeeping kernels vs their references: greedy argmax over the logits (first maximum on ties)
and the CUDA-graph step's input staging (fed token ids, int32 context lengths).

Without CUDA the kernels run in Triton's CPU interpreter; tests marked `gpu` run compiled at serving sizes.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`

from shusheng.deploy.kernels._triton import HAS_TRITON  # noqa: E402
from shusheng.deploy.kernels.argmax import argmax, argmax_ref  # noqa: E402
from shusheng.deploy.kernels.decode_inputs import decode_inputs, decode_inputs_ref  # noqa: E402
from shusheng.deploy.sampler import Sampler, SamplingTensors  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable: the kernels cannot run")


def logits_with_ties(B: int, V: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random rows whose maximum appears several times (so the first one must win), one row all -inf, one with the
    maximum in the last column."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=gen).to(dtype)
    for b in range(B):
        top = x[b].max() + 1
        cols = torch.randperm(V, generator=gen)[: 1 + b % 3]
        x[b, cols] = top
    if B > 1:
        x[1] = float("-inf")
    if B > 2:
        x[2, -1] = x[2].max() + 2
    return x.to(DEVICE)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B, V", [(1, 1000), (3, 5000), (5, 2048), (1, 4099)])
def test_argmax(B, V, dtype):
    x = logits_with_ties(B, V, dtype, seed=B * V)
    assert torch.equal(argmax(x), argmax_ref(x))


@needs_triton
def test_argmax_row_stride():
    x = logits_with_ties(4, 6000, torch.float32, seed=1)
    view = x[:, :3000]  # rows of a wider tensor
    assert torch.equal(argmax(view), argmax_ref(view))
    assert torch.equal(argmax(x[:0]), argmax_ref(x[:0]))


@needs_triton
@pytest.mark.parametrize("fed", [False, True])
@pytest.mark.parametrize("S", [1, 5, 300])
def test_decode_inputs(S, fed):
    gen = torch.Generator().manual_seed(S)
    stage = torch.randint(0, 1000, (5, S), generator=gen)
    stage[3] = torch.randint(1, 1 << 20, (S,), generator=gen)
    feed = torch.randint(0, 50000, (7,), generator=gen).to(DEVICE) if fed else None
    stage[4] = torch.where(torch.rand(S, generator=gen) < 0.5, torch.randint(0, 7, (S,), generator=gen), -1)
    stage = stage.to(DEVICE)
    ids, ctx = torch.full((S,), -7, device=DEVICE), torch.full((S,), -7, dtype=torch.int32, device=DEVICE)
    ref_ids, ref_ctx = ids.clone(), ctx.clone()
    decode_inputs(stage, feed, ids, ctx)
    decode_inputs_ref(stage, feed, ref_ids, ref_ctx)
    assert torch.equal(ids, ref_ids) and torch.equal(ctx, ref_ctx)
    if fed:
        taken = stage[4] >= 0
        assert torch.equal(ids[taken], feed[stage[4][taken]])


def test_greedy_sampler_takes_the_argmax_in_the_logits_dtype():
    """The all-greedy path without logprobs reads the model's bf16 logits as they are (no fp32 copy) and picks
    what the fp32 argmax picks."""
    x = logits_with_ties(6, 3000, torch.bfloat16, seed=5)
    out = Sampler()(x, SamplingTensors.argmax())
    assert out.logprobs is None
    assert torch.equal(out.token_ids, x.float().argmax(-1))


# ---------------------------------------------------------------------------------------------------------------
# GPU, serving sizes
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 2, 16, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_argmax_gpu(B, dtype):
    x = logits_with_ties(B, 92544, dtype, seed=B)
    assert torch.equal(argmax(x), argmax_ref(x))
    for _ in range(3):  # the arrival counters are left zero for the next launch
        assert torch.equal(argmax(x), argmax_ref(x))


@pytest.mark.gpu
def test_argmax_cuda_graph():
    x = logits_with_ties(2, 92544, torch.bfloat16, seed=9)
    argmax(x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ids = argmax(x)
    for seed in range(3):
        x.copy_(logits_with_ties(2, 92544, torch.bfloat16, seed=seed))
        graph.replay()
        assert torch.equal(ids, argmax_ref(x))


def _binaries(kernel) -> int:
    caches = getattr(kernel, "device_caches", None)
    if not caches:
        pytest.skip("this triton keeps its compiled kernels elsewhere")
    return sum(len(c[0]) for c in caches.values())


@pytest.mark.gpu
def test_one_binary_for_every_batch_size():
    """A decode step's batch size must not pick a new binary: a compile in the middle of serving stalls a request
    for hundreds of milliseconds."""
    from shusheng.deploy.kernels.argmax import _argmax_kernel
    from shusheng.deploy.kernels.decode_inputs import _decode_inputs_kernel

    argmax(logits_with_ties(1, 92544, torch.bfloat16, seed=0))
    stage = torch.zeros(5, 1, dtype=torch.long, device=DEVICE)
    decode_inputs(stage, None, torch.zeros(1, dtype=torch.long, device=DEVICE), torch.zeros(1, dtype=torch.int32,
                                                                                             device=DEVICE))
    before = _binaries(_argmax_kernel), _binaries(_decode_inputs_kernel)
    for B in (2, 3, 5, 16, 33, 256):
        argmax(logits_with_ties(B, 92544, torch.bfloat16, seed=B))
        stage = torch.zeros(5, B, dtype=torch.long, device=DEVICE)
        decode_inputs(stage, None, torch.zeros(B, dtype=torch.long, device=DEVICE),
                      torch.zeros(B, dtype=torch.int32, device=DEVICE))
    assert (_binaries(_argmax_kernel), _binaries(_decode_inputs_kernel)) == before
