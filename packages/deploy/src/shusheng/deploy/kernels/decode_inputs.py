"""A CUDA-graph decode step's inputs from its staged rows, in one launch.

The engine stages a decode step's inputs as one (5, S) int64 copy to the device (`model_runner.decode_rows`): token
ids, positions, KV slots, context lengths and, per column, the row of the previous step's samples that holds its
token (-1: the id is already known). This kernel writes what the graph reads besides: the token ids with the fed
ones taken from the previous step's samples (still on the device: no round trip through the host), and the
context lengths as int32 (the attention kernels' type). It replaces six small torch kernels (where, clamp, gather,
compare, two casting copies) per step.

    ids[j] = feed[src[j]] if src[j] >= 0 else staged_ids[j];  ctx[j] = int32(staged_ctx[j])
"""

from __future__ import annotations

import torch

from shusheng.deploy.kernels._triton import require_triton, tl, triton

BLOCK = 256


@triton.jit(do_not_specialize=["S"])  # one binary for every graph size
def _decode_inputs_kernel(stage_ptr, feed_ptr, ids_ptr, ctx_ptr, S, HAS_FEED: tl.constexpr, BLOCK: tl.constexpr):
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = j < S
    ids = tl.load(stage_ptr + j, mask=mask, other=0)
    if HAS_FEED:
        src = tl.load(stage_ptr + 4 * S + j, mask=mask, other=-1)
        fed = tl.load(feed_ptr + tl.maximum(src, 0), mask=mask & (src >= 0), other=0)
        ids = tl.where(src >= 0, fed, ids)
    tl.store(ids_ptr + j, ids, mask=mask)
    ctx = tl.load(stage_ptr + 3 * S + j, mask=mask, other=1)
    tl.store(ctx_ptr + j, ctx.to(tl.int32), mask=mask)


def decode_inputs(stage: torch.Tensor, feed: torch.Tensor | None, ids: torch.Tensor, ctx: torch.Tensor) -> None:
    """Fill `ids` and `ctx` from the staged rows (Triton kernel).

    Args:
        stage: (5, S) int64 contiguous: token ids, positions, slots, context lengths, fed rows (-1: none).
        feed: (R,) int64 tokens sampled by the step before (every fed row < R), or None when no column is fed.
        ids: (S,) int64 out, contiguous. ctx: (S,) int32 out, contiguous.
    """
    require_triton("decode_inputs")
    S = stage.shape[1]
    assert stage.dtype == torch.long and stage.shape[0] == 5 and stage.is_contiguous(), \
        "stage must be a contiguous (5, S) int64 tensor"
    assert ids.shape == (S,) and ids.dtype == torch.long and ids.is_contiguous(), "ids must be (S,) int64"
    assert ctx.shape == (S,) and ctx.dtype == torch.int32 and ctx.is_contiguous(), "ctx must be (S,) int32"
    assert feed is None or (feed.dtype == torch.long and feed.is_contiguous()), "feed must be contiguous int64"
    _decode_inputs_kernel[(triton.cdiv(S, BLOCK),)](stage, feed if feed is not None else ids, ids, ctx, S,
                                                    HAS_FEED=feed is not None, BLOCK=BLOCK)


def decode_inputs_ref(stage: torch.Tensor, feed: torch.Tensor | None, ids: torch.Tensor, ctx: torch.Tensor) -> None:
    """PyTorch reference of `decode_inputs` (same arguments); needs no triton."""
    staged = stage[0]
    if feed is not None:
        src = stage[4]
        staged = torch.where(src >= 0, feed[src.clamp(min=0)], staged)
    ids.copy_(staged)
    ctx.copy_(stage[3])
