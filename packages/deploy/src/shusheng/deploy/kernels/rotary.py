"""Rotary embeddings applied straight out of the fused qkv projection: split q/k/v, rotate q and k, one launch.

Layout: qkv: [N, KV * (G + 2) * D], InternLM2's grouped `wqkv` output: per KV head, G query heads, then k, then v
(each D wide), last dim contiguous, row stride free. positions: [N] int; inv_freq: [D/2] fp32 (the model's
`Rotary.inv_freq`, which carries the rope scaling). Outputs: q [N, KV * G, D] and k [N, KV, D], new contiguous
tensors, query head kv * G + j taken from group kv, slot j (the model's `qkv[:, :, :, :G].reshape`); v [N, KV, D]
is a strided view into qkv (no copy; `store_kv` accepts it). With `cache=` the kernel also writes rotated k and v
into the paged KV cache at each token's slot (what `store_kv` would do next, without its launch).

Semantics are the model's `Rotary` + `apply_rope` (shusheng.model.model), rotate-half convention, with the same
rounding points: angles = float(position) * inv_freq in fp32; cos and sin computed in fp32 and cast to the
activation dtype; then, in that dtype, out = x * cos + cat(-x2, x1) * sin, each product and the sum rounded.

Kernel: grid (N, cdiv(KV * (G + 1), BLOCK_R)); program (n, b) computes token n's cos/sin once ([D/2]) and rotates
BLOCK_R of its KV * (G + 1) rotated heads (the q heads and the k head of every group; v heads are skipped) as a
[BLOCK_R, D/2] tile of first halves and one of second halves, storing each row into q or k.
"""

import torch

from shusheng.deploy.kernels._triton import pdl_args, pdl_enter, require_triton, tl, triton
from shusheng.deploy.kernels.store_kv import store_kv_ref


@triton.jit
def _qkv_rotary_kernel(
    qkv_ptr,  # [N, KV * (G + 2) * D]
    pos_ptr,  # [N]
    inv_freq_ptr,  # [D / 2] fp32
    q_ptr,  # [N, KV * G, D]
    k_ptr,  # [N, KV, D]
    k_cache_ptr,  # [num_slots, KV, D] (with TO_CACHE)
    v_cache_ptr,
    slot_ptr,  # [N] (with TO_CACHE)
    stride_qkv,
    TO_CACHE: tl.constexpr,
    KV: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    PDL: tl.constexpr,
):
    HALF: tl.constexpr = D // 2
    dt = q_ptr.dtype.element_ty
    n = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_HALF)  # [BLOCK_HALF] position within a half
    imask = i < HALF
    # positions, frequencies and slots are never written by the kernel just before (under PDL the one before
    # may still run; the ones before it have finished): read them and make cos/sin while it ends
    angle = tl.load(pos_ptr + n).to(tl.float32) * tl.load(inv_freq_ptr + i, mask=imask, other=0.0)  # fp32
    c = tl.cos(angle).to(dt).to(tl.float32)[None, :]  # [1, BLOCK_HALF], rounded to the activation dtype
    s = tl.sin(angle).to(dt).to(tl.float32)[None, :]
    if TO_CACHE:
        slot = tl.load(slot_ptr + n).to(tl.int64)  # < 0: a padding token, written nowhere
    pdl_enter(PDL)

    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] rotated-head index in [0, KV * (G + 1))
    kv = r // (G + 1)
    j = r % (G + 1)  # slot in the group: j < G a query head, j == G the k head
    mask = (r < KV * (G + 1))[:, None] & imask[None, :]  # [BLOCK_R, BLOCK_HALF]
    src = qkv_ptr + n * stride_qkv + (kv * (G + 2) + j)[:, None] * D + i[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    # Round every product and the sum to the activation dtype, as the model's elementwise ops do (the casts also
    # keep the compiler from contracting them into an fma).
    o1 = ((x1 * c).to(dt).to(tl.float32) + (-x2 * s).to(dt).to(tl.float32)).to(dt)
    o2 = ((x2 * c).to(dt).to(tl.float32) + (x1 * s).to(dt).to(tl.float32)).to(dt)

    is_q = (j < G)[:, None]
    q_dst = q_ptr + n * (KV * G * D) + (kv * G + j)[:, None] * D + i[None, :]
    k_dst = k_ptr + n * (KV * D) + kv[:, None] * D + i[None, :]
    tl.store(q_dst, o1, mask=mask & is_q)
    tl.store(q_dst + HALF, o2, mask=mask & is_q)
    tl.store(k_dst, o1, mask=mask & ~is_q)
    tl.store(k_dst + HALF, o2, mask=mask & ~is_q)
    if TO_CACHE:  # the k head's rows also go to the cache at the token's slot, with the group's v row beside them
        is_k = mask & ~is_q & ((r * 0 + slot) >= 0)[:, None]
        dst = slot * (KV * D) + kv[:, None] * D + i[None, :]
        tl.store(k_cache_ptr + dst, o1, mask=is_k)
        tl.store(k_cache_ptr + dst + HALF, o2, mask=is_k)
        v_src = src + D  # the v head follows the k head in the group
        tl.store(v_cache_ptr + dst, tl.load(v_src, mask=is_k), mask=is_k)
        tl.store(v_cache_ptr + dst + HALF, tl.load(v_src + HALF, mask=is_k), mask=is_k)


def _check(qkv, positions, inv_freq, num_kv_heads, group, head_dim) -> None:
    KV, G, D = num_kv_heads, group, head_dim
    assert qkv.dim() == 2 and qkv.shape[1] == KV * (G + 2) * D, (
        f"qkv {tuple(qkv.shape)} must be [N, KV * (group + 2) * head_dim = {KV * (G + 2) * D}]"
    )
    assert D % 2 == 0, f"head_dim must be even, got {D}"
    assert qkv.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {qkv.dtype}"
    assert positions.shape == (qkv.shape[0],), f"positions {tuple(positions.shape)} must be [N={qkv.shape[0]}]"
    assert positions.dtype in (torch.int32, torch.int64), "positions must be int32 or int64"
    assert inv_freq.shape == (D // 2,) and inv_freq.dtype == torch.float32, "inv_freq must be fp32 [head_dim / 2]"


def qkv_rotary(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the fused qkv projection and apply rotary embeddings to q and k (Triton kernel).

    Args:
        qkv: [N, KV * (group + 2) * head_dim] `wqkv` output in InternLM2's grouped layout, fp32, fp16 or bf16;
            last dim contiguous, row stride free.
        positions: int32 or int64 [N] rotary positions, contiguous.
        inv_freq: fp32 [head_dim / 2] contiguous inverse frequencies (`Rotary.inv_freq`, scaling included).
        num_kv_heads: KV, the number of KV heads (local under tensor parallelism).
        group: G, query heads per KV head.
        head_dim: D.
        out: optional (q, k) outputs, contiguous [N, KV * G, D] and [N, KV, D] in qkv's dtype (e.g. a CUDA
            graph's static buffers). Allocated when None.
        cache: optional (k_cache, v_cache, slot_mapping): also write each token's rotated k and its v into the
            paged caches ([num_blocks, block_size, KV, D], contiguous, qkv's dtype) at its slot (int32/int64 [N];
            < 0 skips the token), which is `store_kv` done in the same launch.

    Returns:
        (q, k, v): q [N, KV * G, D] and k [N, KV, D] rotated, contiguous (`out` when given); v [N, KV, D] a view
        of qkv.

    Raises:
        RuntimeError: when triton is not installed (use `qkv_rotary_ref`).
    """
    require_triton("qkv_rotary")
    _check(qkv, positions, inv_freq, num_kv_heads, group, head_dim)
    assert qkv.stride(1) == 1, "the last dim of qkv must be contiguous"
    assert positions.is_contiguous() and inv_freq.is_contiguous(), "positions and inv_freq must be contiguous"
    N, KV, G, D = qkv.shape[0], num_kv_heads, group, head_dim
    q, k = (qkv.new_empty(N, KV * G, D), qkv.new_empty(N, KV, D)) if out is None else out
    assert q.shape == (N, KV * G, D) and k.shape == (N, KV, D), f"out {tuple(q.shape)}, {tuple(k.shape)}: bad shapes"
    assert q.is_contiguous() and k.is_contiguous(), "q and k outputs must be contiguous"
    assert q.dtype == k.dtype == qkv.dtype, "q and k outputs must be in qkv's dtype"
    v = qkv.view(N, KV, G + 2, D)[:, :, G + 1]
    if N == 0:
        return q, k, v
    if cache is not None:
        kc, vc, slots = cache
        assert kc.shape[-2:] == (KV, D) and vc.shape == kc.shape, f"caches {tuple(kc.shape)} must end in [{KV}, {D}]"
        assert kc.is_contiguous() and vc.is_contiguous() and kc.dtype == vc.dtype == qkv.dtype, \
            "caches must be contiguous, in qkv's dtype"
        assert slots.shape == (N,) and slots.is_contiguous(), f"slot_mapping must be contiguous [N={N}]"
    else:
        kc = vc = slots = k  # never read without TO_CACHE
    block_half = triton.next_power_of_2(D // 2)
    block_r = min(triton.next_power_of_2(KV * (G + 1)), max(1, 1024 // block_half))
    grid = (N, triton.cdiv(KV * (G + 1), block_r))
    _qkv_rotary_kernel[grid](
        qkv, positions, inv_freq, q, k, kc, vc, slots, qkv.stride(0),
        TO_CACHE=cache is not None, KV=KV, G=G, D=D, BLOCK_R=block_r, BLOCK_HALF=block_half, num_warps=4,
        **pdl_args(qkv.device),
    )
    return q, k, v


def qkv_rotary_ref(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch reference of `qkv_rotary` (same arguments and semantics); needs no triton."""
    _check(qkv, positions, inv_freq, num_kv_heads, group, head_dim)
    N, KV, G, D = qkv.shape[0], num_kv_heads, group, head_dim
    x = qkv.view(N, KV, G + 2, D)
    q, k, v = x[:, :, :G].reshape(N, KV * G, D), x[:, :, G], x[:, :, G + 1]
    freqs = positions[:, None].float() * inv_freq  # [N, D/2] fp32
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [N, 1, D]
    cos, sin = emb.cos().to(qkv.dtype), emb.sin().to(qkv.dtype)

    def rope(t: torch.Tensor) -> torch.Tensor:  # [N, heads, D], rotate-half
        t1, t2 = t.chunk(2, dim=-1)
        return t * cos + torch.cat((-t2, t1), dim=-1) * sin

    q, k = rope(q), rope(k)
    if out is not None:
        q, k = out[0].copy_(q), out[1].copy_(k)
    if cache is not None:
        store_kv_ref(k, v, cache[0], cache[1], cache[2])
    return q, k, v
