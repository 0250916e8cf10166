"""Paged decode attention: one new query token per sequence against its cached K/V ("flash decoding").

Layout: q [B, H, D]; k_cache, v_cache [num_blocks, block_size, KV, D] contiguous; block_tables int32
[B, max_blocks_per_seq] maps a sequence's logical block i to a physical block; context_lens int32 [B] is the number
of cached tokens each query attends to (its own K/V already stored), so decode is causal by construction.

One kernel, `_decode_split_kernel`, grid (B, KV, num_splits): program (b, kv, s) takes the G = H / KV query heads
that share KV head kv as the M rows of `tl.dot` (padded to BLOCK_H >= 16, masked), so each K/V tile is read once for
all G heads. Split s covers tokens [s * L_s, min((s + 1) * L_s, L)) with L_s = ceil(L / num_splits) rounded up to
whole BLOCK_N tiles (splits past the end are empty and exit at once). It walks its tokens BLOCK_N at a time, looks
each token's physical block up in the block table (so a tile may span several cache blocks, or part of one), and
keeps an fp32 online softmax in base 2 (scores pre-multiplied by scale * log2(e)). With num_splits == 1 it writes
the normalised output directly; otherwise it writes the split's normalised partial output mid_o [B, H, S, D] and
its log2-sum-exp mid_lse [B, H, S] (fp32), then counts its arrival on (b, kv)'s counter: the last non-empty split
to arrive rescales all of them by 2^(lse_s - max lse) and sums them (the usual log-sum-exp merge, in split order,
so the result does not depend on which program came last) and re-arms the counter. So a decode layer's attention
is one launch, not a split launch and a reduce launch.

Splitting pays when B * KV programs leave SMs idle and contexts are long; `decode_num_splits` picks the count.
References: flash-decoding (Dao et al. 2023); the two-stage Triton decode kernels of LightLLM and SGLang.
"""

import torch

from shusheng.deploy.kernels._triton import (
    DEFAULT_NUM_SMS,
    kept_buffer,
    num_sms,
    pdl_args,
    pdl_enter,
    require_triton,
    tl,
    triton,
)

# K/V tile: BLOCK_N tokens of 32 KB (128 tokens for bf16, D = 128), so that K and V, two pipeline stages deep, take
# 128 KB of shared memory. On an H100 128-token tiles read 1.3x faster than 64 when few programs run (B * KV small,
# no split) and the same otherwise.
TILE_BYTES, MAX_BLOCK_N = 32768, 128
NUM_WARPS, NUM_STAGES = 4, 2
MAX_SPLITS = 16
MIN_SPLIT_TOKENS = 256  # a shorter split costs more in launch and merge than it saves
LOG2E = 1.4426950408889634


@triton.jit
def _split_len(L, num_splits, BLOCK_N: tl.constexpr):
    # tokens per split, rounded up to whole tiles so that no tile straddles two splits
    return tl.cdiv(tl.cdiv(L, num_splits), BLOCK_N) * BLOCK_N


@triton.jit(do_not_specialize=["num_splits"])
def _decode_split_kernel(
    q_ptr,  # [B, H, D]
    k_cache_ptr,  # [num_blocks, block_size, KV, D]
    v_cache_ptr,  # [num_blocks, block_size, KV, D]
    block_tables_ptr,  # [B, max_blocks_per_seq] int32
    context_lens_ptr,  # [B] int32
    out_ptr,  # [B, H, D], written when DIRECT
    mid_o_ptr,  # [B, H, S, D] fp32, written otherwise
    mid_lse_ptr,  # [B, H, S] fp32
    counter_ptr,  # [B * KV] int32 arrivals per (sequence, KV head), zero between launches
    qk_scale,  # scale * log2(e)
    num_splits,
    stride_qb,
    stride_qh,
    stride_cb,  # cache strides: block, token, KV head (D is contiguous)
    stride_ct,
    stride_ch,
    stride_btb,
    stride_ob,
    stride_oh,
    stride_mb,
    stride_mh,
    stride_ms,
    stride_lb,
    stride_lh,
    G: tl.constexpr,  # query heads per KV head
    BLOCK_H: tl.constexpr,  # G padded to a power of two >= 16 (tl.dot's smallest M)
    D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    BLOCK_N: tl.constexpr,
    DIRECT: tl.constexpr,  # num_splits == 1: write the output, skip the partials
    IN_PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    b = tl.program_id(0)
    kv = tl.program_id(1)
    s = tl.program_id(2)
    # the context lengths are never written by the kernel just before (under PDL the one before may still run;
    # the ones before it have finished): read them while it ends
    L = tl.load(context_lens_ptr + b)
    if DIRECT:
        lo = 0
        hi = L
    else:
        split_len = _split_len(L, num_splits, BLOCK_N)
        lo = s * split_len
        hi = tl.minimum(lo + split_len, L)
    pdl_enter(PDL)  # before the early return below too: every program must wait
    if lo >= hi:  # an empty split of a short sequence: neither counted nor merged
        return

    g = tl.arange(0, BLOCK_H)
    h = kv * G + g  # [BLOCK_H] query heads of this KV head
    hmask = g < G
    d = tl.arange(0, D)
    q = tl.load(q_ptr + b * stride_qb + h[:, None] * stride_qh + d[None, :], mask=hmask[:, None], other=0.0)

    m = tl.full([BLOCK_H], float("-inf"), tl.float32)  # running max of the base-2 scores
    l = tl.zeros([BLOCK_H], tl.float32)  # running sum of 2^(score - m)
    acc = tl.zeros([BLOCK_H, D], tl.float32)
    bt_row = block_tables_ptr + b * stride_btb
    for start in range(lo, hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] token positions
        pmask = pos < hi
        blk = tl.load(bt_row + pos // BLOCK_SIZE, mask=pmask, other=0).to(tl.int64)
        off = blk * stride_cb + (pos % BLOCK_SIZE) * stride_ct + kv * stride_ch  # [BLOCK_N]
        k = tl.load(k_cache_ptr + off[None, :] + d[:, None], mask=pmask[None, :], other=0.0)  # [D, BLOCK_N]
        v = tl.load(v_cache_ptr + off[:, None] + d[None, :], mask=pmask[:, None], other=0.0)  # [BLOCK_N, D]
        sc = tl.dot(q, k, input_precision=IN_PRECISION) * qk_scale  # [BLOCK_H, BLOCK_N]
        sc = tl.where(pmask[None, :], sc, float("-inf"))
        m_new = tl.maximum(m, tl.max(sc, 1))  # finite: every tile holds at least one valid token
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(sc - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=IN_PRECISION)
        m = m_new

    acc = acc / l[:, None]
    o_ptrs = out_ptr + b * stride_ob + h[:, None] * stride_oh + d[None, :]
    if DIRECT:
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=hmask[:, None])
    else:
        mo_ptrs = mid_o_ptr + b * stride_mb + h[:, None] * stride_mh + d[None, :]
        lse_ptrs = mid_lse_ptr + b * stride_lb + h * stride_lh
        tl.store(mo_ptrs + s * stride_ms, acc, mask=hmask[:, None])
        tl.store(lse_ptrs + s, m + tl.log2(l), mask=hmask)
        # the last non-empty split of (b, kv) to finish merges them all (no second launch); the atomic releases
        # this program's stores above and acquires the others'
        n_valid = tl.cdiv(L, split_len)
        cnt = counter_ptr + b * tl.num_programs(1) + kv
        if tl.atomic_add(cnt, 1, sem="acq_rel") == n_valid - 1:
            top = tl.full([BLOCK_H], float("-inf"), tl.float32)
            for i in range(n_valid):
                top = tl.maximum(top, tl.load(lse_ptrs + i, mask=hmask, other=0.0, cache_modifier=".cg"))
            num = tl.zeros([BLOCK_H, D], tl.float32)
            den = tl.zeros([BLOCK_H], tl.float32)
            for i in range(n_valid):
                w = tl.exp2(tl.load(lse_ptrs + i, mask=hmask, other=0.0, cache_modifier=".cg") - top)
                o = tl.load(mo_ptrs + i * stride_ms, mask=hmask[:, None], other=0.0, cache_modifier=".cg")
                num += w[:, None] * o
                den += w
            tl.store(o_ptrs, (num / den[:, None]).to(out_ptr.dtype.element_ty), mask=hmask[:, None])
            tl.atomic_xchg(cnt, 0)  # re-armed for the next launch (CUDA-graph replays included)


def decode_num_splits(batch_size: int, num_kv_heads: int, max_context_len: int, num_sms: int = DEFAULT_NUM_SMS) -> int:
    """How many splits per sequence `paged_decode_attention` uses when num_splits is None.

    No split when the longest context is short (under 2 * MIN_SPLIT_TOKENS) or when the batch_size * num_kv_heads
    programs of an unsplit launch already cover the SMs; otherwise enough splits for about two programs per SM,
    keeping at least MIN_SPLIT_TOKENS tokens per split and at most MAX_SPLITS splits.
    A CUDA-graph runner can call this once per captured batch size and pass the result explicitly.
    """
    programs = batch_size * num_kv_heads
    if max_context_len < 2 * MIN_SPLIT_TOKENS or programs >= num_sms:
        return 1
    want = -(-2 * num_sms // programs)
    return min(want, max_context_len // MIN_SPLIT_TOKENS, MAX_SPLITS)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    max_context_len: int | None = None,
) -> torch.Tensor:
    """Decode attention over a paged KV cache (Triton, split-K).

    CUDA-graph safe (no host sync, fixed launch shapes) when num_splits is given, or when max_context_len is.

    Args:
        q: [B, H, D] queries, one per sequence; D a power of two in [16, 256], D contiguous.
        k_cache: [num_blocks, block_size, KV, D] contiguous, q's dtype; H must be a multiple of KV.
        v_cache: same shape and dtype as k_cache.
        block_tables: int32 [B, max_blocks_per_seq], innermost dim contiguous; entries past a sequence's last
            block are never read.
        context_lens: int32 [B], cached tokens each query attends to (>= 1, its own token included).
        scale: softmax scale, normally 1 / sqrt(D).
        num_splits: partitions per sequence (1 = no split, no merge); None chooses with
            `decode_num_splits`.
        out: optional [B, H, D] output of q's dtype, D contiguous.
        max_context_len: longest context in the batch, used only when num_splits is None; when both are None
            it is read from context_lens (a host sync).

    Returns:
        out: [B, H, D] of q's dtype.
    """
    require_triton("paged_decode_attention")
    B, H, D = q.shape
    _, block_size, KV, _ = k_cache.shape
    assert k_cache.shape[3] == D and v_cache.shape == k_cache.shape, f"caches {tuple(k_cache.shape)} vs q {q.shape}"
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), "the caches must be contiguous"
    assert q.dtype == k_cache.dtype == v_cache.dtype, "q and the caches must share one dtype"
    assert q.stride(2) == 1, "q's head dim must be contiguous"
    assert H % KV == 0, f"H={H} must be a multiple of KV={KV}"
    assert D >= 16 and D <= 256 and D & (D - 1) == 0, f"head_dim {D} must be a power of two in [16, 256]"
    assert block_tables.dtype == torch.int32 and block_tables.dim() == 2 and block_tables.shape[0] == B
    assert block_tables.stride(1) == 1, "block_tables rows must be contiguous"
    assert context_lens.dtype == torch.int32 and context_lens.shape == (B,), "context_lens must be int32 [B]"
    if out is None:
        out = torch.empty_like(q)
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride(2) == 1, "out must be like q"
    if B == 0:
        return out
    if num_splits is None:
        if max_context_len is None:
            max_context_len = int(context_lens.max())
        num_splits = decode_num_splits(B, KV, max_context_len, num_sms(q.device))
    assert num_splits >= 1

    G = H // KV
    block_n = min(MAX_BLOCK_N, TILE_BYTES // (D * q.element_size()))
    direct = num_splits == 1
    if direct:  # the partial buffers are unused: pass out in their place
        mid_o, mid_lse, counters = out, out, out
        mid_strides = (0,) * 5
    else:
        mid_o = torch.empty(B, H, num_splits, D, dtype=torch.float32, device=q.device)
        mid_lse = torch.empty(B, H, num_splits, dtype=torch.float32, device=q.device)
        mid_strides = (mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1))
        # arrival counters per (sequence, KV head), a power-of-two count (few buffers); each launch leaves them zero
        counters = kept_buffer("decode counters", q.device, triton.next_power_of_2(B * KV), torch.int32, zero=True)
    in_precision = "ieee" if q.dtype == torch.float32 else "tf32"  # fp32 stays exact; ignored for 16-bit
    _decode_split_kernel[(B, KV, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, mid_o, mid_lse, counters,
        scale * LOG2E, num_splits,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        *mid_strides,
        G=G, BLOCK_H=max(16, triton.next_power_of_2(G)), D=D, BLOCK_SIZE=block_size, BLOCK_N=block_n,
        DIRECT=direct, IN_PRECISION=in_precision, num_warps=NUM_WARPS, num_stages=NUM_STAGES, **pdl_args(q.device),
    )
    return out


def paged_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    max_context_len: int | None = None,
) -> torch.Tensor:
    """PyTorch reference of `paged_decode_attention` (same arguments; num_splits and max_context_len unused).

    Gathers each sequence's K/V through its block table and runs an fp32 softmax; needs no triton.
    """
    B, H, D = q.shape
    block_size, KV = k_cache.shape[1:3]
    if out is None:
        out = torch.empty_like(q)
    for b, L in enumerate(context_lens.tolist()):
        blocks = block_tables[b, : -(-L // block_size)].long()
        k = k_cache[blocks].flatten(0, 1)[:L].float().repeat_interleave(H // KV, dim=1)  # [L, H, D]
        v = v_cache[blocks].flatten(0, 1)[:L].float().repeat_interleave(H // KV, dim=1)
        p = (torch.einsum("hd,lhd->hl", q[b].float(), k) * scale).softmax(-1)  # [H, L]
        out[b] = torch.einsum("hl,lhd->hd", p, v).to(out.dtype)
    return out
