"""Write the new tokens' K/V into the paged KV cache.

Layout (per layer): k_cache, v_cache: [num_blocks, block_size, KV, D], contiguous. A token's slot is
block_id * block_size + offset, so the cache viewed as [num_slots, KV, D] is indexed by the slot directly.
A slot < 0 marks a padding token (a batch padded up to a captured CUDA-graph size) and is skipped.

Kernel: grid (N, cdiv(KV * D, BLOCK)); program (n, j) copies elements [j * BLOCK, (j + 1) * BLOCK) of token
n's flattened [KV * D] row of k and of v into row `slot` of the caches. k and v may be strided views (a slice
of a fused qkv projection), as long as D is their innermost, contiguous dimension.
"""

import torch

from shusheng.deploy.kernels._triton import require_triton, tl, triton


@triton.jit
def _store_kv_kernel(
    k_ptr,  # [N, KV, D]
    v_ptr,  # [N, KV, D]
    k_cache_ptr,  # [num_slots, KV, D]
    v_cache_ptr,  # [num_slots, KV, D]
    slot_ptr,  # [N]
    stride_kn,
    stride_kh,
    stride_vn,
    stride_vh,
    D: tl.constexpr,
    ROW: tl.constexpr,  # KV * D
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0)
    slot = tl.load(slot_ptr + n).to(tl.int64)  # int64: num_slots * KV * D can pass 2**31
    if slot < 0:  # padding token
        return
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] flat index into the token's [KV, D] row
    mask = offs < ROW
    h = offs // D
    d = offs % D
    k = tl.load(k_ptr + n * stride_kn + h * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + n * stride_vn + h * stride_vh + d, mask=mask)
    tl.store(k_cache_ptr + slot * ROW + offs, k, mask=mask)
    tl.store(v_cache_ptr + slot * ROW + offs, v, mask=mask)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write k, v into the caches at slot_mapping, in place (Triton kernel).

    Args:
        k: [N, KV, D] new keys; D must be contiguous (stride 1), other strides are free.
        v: [N, KV, D] new values, same shape and dtype as k.
        k_cache: [num_blocks, block_size, KV, D] contiguous, same dtype as k.
        v_cache: same shape and dtype as k_cache.
        slot_mapping: int32 or int64 [N]; slot = block_id * block_size + offset, < 0 skips the token.

    Raises:
        RuntimeError: when triton is not installed (use `store_kv_ref`).
    """
    require_triton("store_kv")
    N, KV, D = k.shape
    assert v.shape == k.shape, f"k {tuple(k.shape)} and v {tuple(v.shape)} differ"
    assert k.stride(2) == 1 and v.stride(2) == 1, "the head dim of k and v must be contiguous"
    assert k_cache.dim() == 4 and k_cache.shape[2:] == (KV, D), f"k_cache {tuple(k_cache.shape)} vs k {k.shape}"
    assert v_cache.shape == k_cache.shape, "k_cache and v_cache shapes differ"
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), "the caches must be contiguous"
    assert k.dtype == v.dtype == k_cache.dtype == v_cache.dtype, "k, v and the caches must share one dtype"
    assert slot_mapping.shape == (N,), f"slot_mapping {tuple(slot_mapping.shape)} must be [N={N}]"
    assert slot_mapping.dtype in (torch.int32, torch.int64), "slot_mapping must be int32 or int64"
    if N == 0:
        return
    row = KV * D
    block = min(triton.next_power_of_2(row), 2048)
    grid = (N, triton.cdiv(row, block))
    _store_kv_kernel[grid](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        D=D, ROW=row, BLOCK=block, num_warps=4,
    )


def store_kv_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """PyTorch reference of `store_kv` (same arguments and semantics); needs no triton."""
    KV, D = k.shape[1:]
    keep = slot_mapping >= 0  # [N]
    slots = slot_mapping[keep].long()
    k_cache.view(-1, KV, D)[slots] = k[keep]
    v_cache.view(-1, KV, D)[slots] = v[keep]
