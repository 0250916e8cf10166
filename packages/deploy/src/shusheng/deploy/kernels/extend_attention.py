"""Paged extend attention: causal attention of new tokens against the whole paged KV cache.

Covers chunked prefill and prefix-cache hits (and decode rows, q_len = 1, mixed into such a batch).
Layout: q [Nq, H, D], the new tokens of all sequences flattened, sequence b owning rows
cu_seqlens_q[b]:cu_seqlens_q[b + 1]; k_cache, v_cache [num_blocks, block_size, KV, D] contiguous; block_tables int32
[B, max_blocks_per_seq]; context_lens int32 [B] = total KV length of sequence b including its new tokens, whose K/V
are already in the cache. Query i of sequence b sits at position P = context_lens[b] - q_len + i and attends to the
cache positions 0..P.

Kernel `_extend_kernel`, grid (cdiv(max_q_len, BLOCK_Q), B, KV): program (t, b, kv) computes BLOCK_Q consecutive
queries of sequence b for the G = H / KV query heads of KV head kv. The BLOCK_Q * G (query, head) pairs are the
BLOCK_M rows of `tl.dot` (row r = query r // G, head r % G; BLOCK_Q = BLOCK_M // G), so a K/V tile read from the
cache serves all G heads sharing it (G times less K/V traffic than a grid over query heads). Programs whose tile
lies past their sequence's q_len exit at once; the tile index runs backwards over axis 0 so that the last tiles,
which see the most keys, start first. Keys go BLOCK_N at a time, each token's physical block looked up in the
block table, in two phases: tiles wholly at or before the tile's first query position need no mask at all; the
rest, up to the last query's position, get the causal mask. fp32 online softmax in base 2.
"""

import torch

from shusheng.deploy.kernels._triton import require_triton, tl, triton

LOG2E = 1.4426950408889634
# Tiles measured on an H100 (bf16, D = 128, G = 4): 64 x 32 with 4 warps beat 128 x 64 / 8 warps by 10-30% on
# prefill, prefix hits and short chunks alike; small enough for fp32 and D = 256 too.
BLOCK_M, BLOCK_N, NUM_WARPS, NUM_STAGES = 64, 32, 4, 2


@triton.jit
def _attend_tile(
    acc,  # [BLOCK_M, D] fp32
    m,  # [BLOCK_M] fp32 running max (base 2)
    l,  # [BLOCK_M] fp32 running sum
    q,  # [BLOCK_M, D]
    qpos,  # [BLOCK_M] each row's query position
    start,  # first key position of the tile
    hi,  # key positions >= hi are never read
    k_cache_ptr,
    v_cache_ptr,
    bt_row,  # this sequence's block-table row
    kv_off,  # KV head offset in the cache
    qk_scale,
    stride_cb,
    stride_ct,
    D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,  # False: the tile is visible to every row in full
    IN_PRECISION: tl.constexpr,
):
    pos = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] key positions
    d = tl.arange(0, D)
    if CAUSAL:
        pmask = pos < hi
        blk = tl.load(bt_row + pos // BLOCK_SIZE, mask=pmask, other=0).to(tl.int64)
    else:
        blk = tl.load(bt_row + pos // BLOCK_SIZE).to(tl.int64)
    off = blk * stride_cb + (pos % BLOCK_SIZE) * stride_ct + kv_off  # [BLOCK_N]
    if CAUSAL:
        k = tl.load(k_cache_ptr + off[None, :] + d[:, None], mask=pmask[None, :], other=0.0)  # [D, BLOCK_N]
        v = tl.load(v_cache_ptr + off[:, None] + d[None, :], mask=pmask[:, None], other=0.0)  # [BLOCK_N, D]
    else:
        k = tl.load(k_cache_ptr + off[None, :] + d[:, None])
        v = tl.load(v_cache_ptr + off[:, None] + d[None, :])
    sc = tl.dot(q, k, input_precision=IN_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
    if CAUSAL:
        sc = tl.where(pos[None, :] <= qpos[:, None], sc, float("-inf"))
    m_new = tl.maximum(m, tl.max(sc, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(sc - m_new[:, None])
    l = l * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=IN_PRECISION)
    return acc, m_new, l


@triton.jit(do_not_specialize=["num_tiles"])  # varies by step: one binary for all
def _extend_kernel(
    q_ptr,  # [Nq, H, D]
    k_cache_ptr,  # [num_blocks, block_size, KV, D]
    v_cache_ptr,
    block_tables_ptr,  # [B, max_blocks_per_seq] int32
    cu_seqlens_q_ptr,  # [B + 1] int32
    context_lens_ptr,  # [B] int32
    out_ptr,  # [Nq, H, D]
    qk_scale,  # scale * log2(e)
    num_tiles,  # grid axis 0: cdiv(max_q_len, BLOCK_Q)
    stride_qn,
    stride_qh,
    stride_cb,  # cache strides: block, token, KV head (D is contiguous)
    stride_ct,
    stride_ch,
    stride_btb,
    stride_on,
    stride_oh,
    G: tl.constexpr,  # query heads per KV head
    BLOCK_M: tl.constexpr,  # rows of the dot: BLOCK_Q queries x G heads (padded)
    BLOCK_Q: tl.constexpr,
    D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    BLOCK_N: tl.constexpr,
    IN_PRECISION: tl.constexpr,
):
    t = num_tiles - 1 - tl.program_id(0)
    b = tl.program_id(1)
    kv = tl.program_id(2)
    q_start = tl.load(cu_seqlens_q_ptr + b)
    q_len = tl.load(cu_seqlens_q_ptr + b + 1) - q_start
    if t * BLOCK_Q >= q_len:
        return
    prefix = tl.load(context_lens_ptr + b) - q_len  # cached tokens before the new ones
    q_last = tl.minimum((t + 1) * BLOCK_Q, q_len) - 1  # last query of this tile

    r = tl.arange(0, BLOCK_M)
    i = t * BLOCK_Q + r // G  # [BLOCK_M] query index within the sequence
    rmask = (r < BLOCK_Q * G) & (i <= q_last)  # padding rows compute garbage that is never stored
    h = kv * G + r % G  # [BLOCK_M] query head
    qpos = prefix + i  # [BLOCK_M] absolute position
    d = tl.arange(0, D)
    row_off = (q_start + i)[:, None] * stride_qn + h[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptr + row_off, mask=rmask[:, None], other=0.0)  # [BLOCK_M, D]

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    bt_row = block_tables_ptr + b * stride_btb
    kv_off = kv * stride_ch
    first = prefix + t * BLOCK_Q  # position of the tile's first query
    full_end = (first + 1) // BLOCK_N * BLOCK_N  # keys [0, full_end) are visible to every row
    hi = prefix + q_last + 1  # keys [0, hi) are visible to some row
    for start in range(0, full_end, BLOCK_N):
        acc, m, l = _attend_tile(
            acc, m, l, q, qpos, start, hi, k_cache_ptr, v_cache_ptr, bt_row, kv_off, qk_scale, stride_cb, stride_ct,
            D, BLOCK_SIZE, BLOCK_N, False, IN_PRECISION,
        )
    # the first causal tile holds key `first` (<= every row's qpos), so every row's max is finite from here on
    for start in range(full_end, hi, BLOCK_N):
        acc, m, l = _attend_tile(
            acc, m, l, q, qpos, start, hi, k_cache_ptr, v_cache_ptr, bt_row, kv_off, qk_scale, stride_cb, stride_ct,
            D, BLOCK_SIZE, BLOCK_N, True, IN_PRECISION,
        )

    acc = acc / l[:, None]
    o_off = (q_start + i)[:, None] * stride_on + h[:, None] * stride_oh + d[None, :]
    tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=rmask[:, None])


def paged_extend_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    max_q_len: int,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of new tokens against a paged KV cache holding their prefix and themselves (Triton).

    No host sync: the grid comes from max_q_len, so a fixed max_q_len keeps it CUDA-graph safe.

    Args:
        q: [Nq, H, D] queries of all sequences, flattened; D a power of two in [16, 256], D contiguous.
        k_cache: [num_blocks, block_size, KV, D] contiguous, q's dtype; H must be a multiple of KV.
        v_cache: same shape and dtype as k_cache.
        block_tables: int32 [B, max_blocks_per_seq], innermost dim contiguous; entries past a sequence's last
            block are never read.
        cu_seqlens_q: int32 [B + 1], cumulative query counts (cu[0] = 0, cu[B] = Nq).
        context_lens: int32 [B], total KV length of each sequence including its new tokens (>= its q_len).
        max_q_len: an upper bound on cu[b + 1] - cu[b] (rows past it would be left unwritten).
        scale: softmax scale, normally 1 / sqrt(D).
        out: optional [Nq, H, D] output of q's dtype, D contiguous.

    Returns:
        out: [Nq, H, D] of q's dtype.
    """
    require_triton("paged_extend_attention")
    Nq, H, D = q.shape
    _, block_size, KV, _ = k_cache.shape
    B = context_lens.shape[0]
    assert k_cache.shape[3] == D and v_cache.shape == k_cache.shape, f"caches {tuple(k_cache.shape)} vs q {q.shape}"
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), "the caches must be contiguous"
    assert q.dtype == k_cache.dtype == v_cache.dtype, "q and the caches must share one dtype"
    assert q.stride(2) == 1, "q's head dim must be contiguous"
    assert H % KV == 0, f"H={H} must be a multiple of KV={KV}"
    assert D >= 16 and D <= 256 and D & (D - 1) == 0, f"head_dim {D} must be a power of two in [16, 256]"
    assert block_tables.dtype == torch.int32 and block_tables.dim() == 2 and block_tables.shape[0] == B
    assert block_tables.stride(1) == 1, "block_tables rows must be contiguous"
    assert context_lens.dtype == torch.int32 and context_lens.dim() == 1, "context_lens must be int32 [B]"
    assert cu_seqlens_q.dtype == torch.int32 and cu_seqlens_q.shape == (B + 1,), "cu_seqlens_q must be int32 [B+1]"
    if out is None:
        out = torch.empty_like(q)
    assert out.shape == q.shape and out.dtype == q.dtype and out.stride(2) == 1, "out must be like q"
    if Nq == 0 or B == 0:
        return out
    assert max_q_len >= 1

    G = H // KV
    block_m = max(BLOCK_M, triton.next_power_of_2(G))
    block_q = block_m // G
    num_tiles = triton.cdiv(max_q_len, block_q)
    _extend_kernel[(num_tiles, B, KV)](
        q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, out,
        scale * LOG2E, num_tiles,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        G=G, BLOCK_M=block_m, BLOCK_Q=block_q, D=D, BLOCK_SIZE=block_size, BLOCK_N=BLOCK_N,
        IN_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return out


def paged_extend_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    max_q_len: int,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """PyTorch reference of `paged_extend_attention` (same arguments; max_q_len unused).

    Gathers each sequence's K/V through its block table and runs a causal fp32 softmax; needs no triton.
    """
    H = q.shape[1]
    block_size, KV = k_cache.shape[1:3]
    if out is None:
        out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    for b, L in enumerate(context_lens.tolist()):
        n = cu[b + 1] - cu[b]
        blocks = block_tables[b, : -(-L // block_size)].long()
        k = k_cache[blocks].flatten(0, 1)[:L].float().repeat_interleave(H // KV, dim=1)  # [L, H, D]
        v = v_cache[blocks].flatten(0, 1)[:L].float().repeat_interleave(H // KV, dim=1)
        s = torch.einsum("qhd,lhd->hql", q[cu[b] : cu[b + 1]].float(), k) * scale  # [H, n, L]
        qpos = torch.arange(L - n, L, device=q.device)
        s = s.masked_fill(torch.arange(L, device=q.device)[None, :] > qpos[:, None], float("-inf"))
        out[cu[b] : cu[b + 1]] = torch.einsum("hql,lhd->qhd", s.softmax(-1), v).to(out.dtype)
    return out
