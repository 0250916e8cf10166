"""Runs the model over a scheduled batch: KV-cache sizing, input preparation, CUDA graphs for decode steps and,
cut at the attention calls, for prefill and mixed steps (`prefill_graphs.py`).

The KV pool is sized after a profiling forward of a full token budget: what `gpu_memory_utilization` of the card
leaves after weights, activations and non-torch memory becomes blocks. Decode-only steps (every sequence adds one
token) replay a CUDA graph captured for the next larger batch size, padded rows writing to no slot.

Under tensor parallelism (`tp_group`; see tensor_parallel.py) the runner holds its rank's shard of the weights and
a KV pool of its rank's KV heads, with as many blocks as the smallest pool of the group, so every rank's scheduler
makes the same decisions.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from shusheng.model import ModelConfig, Transformer, load_pretrained
from shusheng.model.parallel import shard_tp_local

from .config import EngineConfig
from .fused_decoder import FusedDecoder
from .kernels import decode_inputs
from .paged_attention import AttentionMetadata, PagedAttention, ops_for
from .prefill_graphs import PrefillGraphs, prefill_graph_sizes
from .scheduler import ScheduledBatch
from .sequence import PENDING, Sequence


def block_tables(seqs: list[Sequence], width: int | None = None) -> Tensor:
    """(B, width or the longest table) int32 CPU tensor of the sequences' block tables, zero-padded (the rows are
    copied from the tables' int32 arrays into one: several times faster than a tensor from nested lists)."""
    width = width or max([len(s.block_table) for s in seqs])
    flat = array("i", bytes(4 * width * len(seqs)))
    for i, s in enumerate(seqs):
        table = s.block_table
        flat[i * width : i * width + len(table)] = table
    return torch.frombuffer(flat, dtype=torch.int32).view(len(seqs), width)


def decode_rows(seqs: list[Sequence], rows: dict[int, int], size: int, block_size: int) -> tuple[Tensor, bool, int]:
    """A decode step's inputs, one column per sequence, padded to `size` columns.

    Args:
        seqs: sequences that each compute their last token (at position `num_computed`).
        rows: seq_id -> row of the fed tokens (`Feed.rows`) for a last token still `PENDING`.
        size: columns; those past `len(seqs)` are padding: token 0 at position 0, slot -1 (written nowhere),
            context 1, nothing fed.
        block_size: tokens per KV block.

    Returns:
        A (5, size) int64 CPU tensor of token ids (0 where fed), positions, KV slots, context lengths and fed rows
        (-1: none); whether any token is fed; the longest context.
    """
    ids, pos, slots, src = array("q"), array("q"), array("q"), array("q")
    fed = False
    for seq in seqs:
        p = seq.num_computed
        pos.append(p)
        slots.append(seq.block_table[p // block_size] * block_size + p % block_size)
        token = seq.token_ids[p]
        if token == PENDING:
            ids.append(0)
            src.append(rows[seq.seq_id])
            fed = True
        else:
            ids.append(token)
            src.append(-1)
    ctx = array("q", [p + 1 for p in pos])
    pad = size - len(seqs)
    zeros, minus = array("q", bytes(8 * pad)), array("q", [-1]) * pad
    flat = ids + zeros + pos + zeros + slots + minus + ctx + array("q", [1]) * pad + src + minus
    return torch.frombuffer(flat, dtype=torch.long).view(5, size), fed, max(ctx, default=1)


@dataclass
class StepLogits:
    # (R, V): one row per sequence that samples this step, in `sample_seqs` order; fp32, or from a CUDA graph the
    # model's dtype (the sampler converts what it reads), a view of the graph's output valid until its next replay
    logits: Tensor
    sample_seqs: list[Sequence]
    # seq_id -> (first position, (m, V) fp32 logits at prompt positions first .. first + m - 1), for prompt logprobs
    prompt_logits: dict[int, tuple[int, Tensor]] = field(default_factory=dict)


@dataclass
class Feed:
    """Tokens sampled by the step before, still on the device: `tokens[rows[seq_id]]` is that sequence's."""

    tokens: Tensor  # (R,) int64
    rows: dict[int, int]


def to_device(data, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A host list (or CPU tensor) on `device` without a stream sync: a pageable host-to-device copy waits for
    every kernel queued before it, which would serialize the host with the GPU. Staged through pinned memory
    (PyTorch's caching host allocator keeps each staging block until its copy has run)."""
    t = data if isinstance(data, Tensor) else torch.tensor(data, dtype=dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available; use device='cpu'")
    return device


def resolve_dtype(name: str, device: torch.device, checkpoint_dtype: str) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cpu":
        return torch.float32  # CPU matmuls in bf16 are slow and the tests compare with fp32 references
    dtype = getattr(torch, checkpoint_dtype, torch.bfloat16)
    return torch.bfloat16 if dtype == torch.float32 else dtype


class ModelRunner:
    """Args:
        config: the engine config.
        model: an in-memory model to run instead of loading `config.model` (one device only).
        tp_group: the tensor-parallel process group this rank belongs to (its rank r runs on cuda:r, or the CPU).
    """

    def __init__(self, config: EngineConfig, model: Transformer | None = None,
                 tp_group: dist.ProcessGroup | None = None):
        self.config = config
        self.tp_group = tp_group
        self.tp_rank = dist.get_rank(tp_group) if tp_group is not None else 0
        self.tp_size = dist.get_world_size(tp_group) if tp_group is not None else 1
        if self.tp_size != config.tensor_parallel_size:
            raise ValueError(
                f"tensor_parallel_size {config.tensor_parallel_size} needs one process per rank: build the engine "
                "with shusheng.deploy.tensor_parallel.build_engine (or pipeline(path, tensor_parallel_size=N)), "
                "which starts them" if tp_group is None else
                f"the tensor-parallel group has {self.tp_size} ranks but tensor_parallel_size is "
                f"{config.tensor_parallel_size}"
            )
        self.device = resolve_device(config.device)
        if tp_group is not None and self.device.type == "cuda":
            self.device = torch.device("cuda", self.tp_rank)  # one card per rank
        if model is None:
            ckpt_cfg = ModelConfig.from_file(config.model)
            self.dtype = resolve_dtype(config.dtype, self.device, ckpt_cfg.torch_dtype)
            if tp_group is None:
                model = load_pretrained(config.model, dtype=self.dtype, device=self.device)
            else:  # cut on the host: the card only ever holds this rank's shard
                model = load_pretrained(config.model, dtype=self.dtype, device="cpu")
                model = shard_tp_local(model, self.tp_rank, self.tp_size).to(self.device)
        elif tp_group is not None:
            raise ValueError("tensor parallelism loads its weights from the checkpoint folder on every rank; "
                             "an in-memory model cannot be sharded across processes")
        else:  # an in-memory model (benchmarks with random weights): used as it is
            self.dtype = next(model.parameters()).dtype
            self.device = next(model.parameters()).device
        self.model = model.eval()
        self.model_config = mc = self.model.config
        self.max_model_len = config.max_model_len or mc.max_position_embeddings
        self.block_size = config.block_size
        self.max_blocks_per_seq = math.ceil(self.max_model_len / self.block_size)
        self.ops = ops_for(self.device)
        self.num_kv_heads = mc.num_kv_heads // self.tp_size  # this rank's
        # takes over the model's w1/w3 (fused into w13)
        self.decoder = FusedDecoder(self.model, self.ops, tp_group, self.max_model_len)
        self.num_blocks = config.num_kv_blocks or self._auto_num_blocks()
        shape = (self.num_blocks, self.block_size, self.num_kv_heads, mc.head_dim)
        self.k_caches = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(mc.num_layers)]
        self.v_caches = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(mc.num_layers)]
        self.attn = PagedAttention(self.k_caches, self.v_caches, self.ops)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.graph_replays = 0
        self.prefill_graphs: PrefillGraphs | None = None
        if self.device.type == "cuda" and not config.enforce_eager:
            self._capture_graphs()
            limit = min(config.max_prefill_graph_tokens, config.max_num_batched_tokens)
            if limit:  # under tensor parallelism every rank captures the same pieces, all-reduces included
                self.prefill_graphs = PrefillGraphs(self.decoder, self.attn, prefill_graph_sizes(limit))
                self.prefill_graphs.capture()  # its memory (`capture_stats`) comes out of the headroom

    # ---- KV pool sizing ----

    @property
    def bytes_per_block(self) -> int:
        mc = self.model_config
        return 2 * mc.num_layers * self.block_size * self.num_kv_heads * mc.head_dim * self.dtype.itemsize

    def _auto_num_blocks(self) -> int:
        need_one = self.max_blocks_per_seq  # one sequence at max_model_len must always fit
        if self.device.type != "cuda":
            cap = self.config.max_num_seqs * self.max_blocks_per_seq
            return max(need_one, min(cap, int(self.config.cpu_kv_cache_gb * 1e9 // self.bytes_per_block)))
        blocks, kv_bytes = self._free_blocks()
        if self.tp_group is not None:  # every rank's scheduler must see the same pool: the smallest one
            t = torch.tensor([blocks], dtype=torch.long, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.tp_group)
            if int(t) < blocks:
                blocks, kv_bytes = int(t), int(t) * self.bytes_per_block
        if blocks < need_one:
            raise ValueError(
                f"not enough GPU memory for the KV cache: {max(kv_bytes, 0) / 2**30:.2f} GiB left for it after the "
                f"weights and activations, one {self.max_model_len}-token sequence needs "
                f"{need_one * self.bytes_per_block / 2**30:.2f} GiB; raise gpu_memory_utilization or lower "
                "max_model_len" + (" (or shard the model over more GPUs: tensor_parallel_size)"
                                   if self.tp_group is None else "")
            )
        return blocks

    def _free_blocks(self) -> tuple[int, float]:
        """KV blocks (and bytes) that `gpu_memory_utilization` of the card leaves after a profiling forward."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._profile_forward()
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        non_torch = (total - free) - torch.cuda.memory_reserved(self.device)  # CUDA context, NCCL, ...
        kv_bytes = total * self.config.gpu_memory_utilization - peak - non_torch
        torch.cuda.empty_cache()
        return int(kv_bytes // self.bytes_per_block), kv_bytes

    @torch.inference_mode()
    def _profile_forward(self) -> None:
        """A forward of a full token budget (and its sampled rows) through a throwaway cache."""
        mc = self.model_config
        n = min(self.config.max_num_batched_tokens, self.config.max_num_seqs * self.max_model_len)
        lens = [min(self.max_model_len, n - i) for i in range(0, n, self.max_model_len)]
        nb = sum(math.ceil(x / self.block_size) for x in lens)
        shape = (nb, self.block_size, self.num_kv_heads, mc.head_dim)
        k = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(mc.num_layers)]
        v = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(mc.num_layers)]
        attn = PagedAttention(k, v, self.ops)
        tables, slots, start = [], [], 0
        for x in lens:
            blocks = list(range(start, start + math.ceil(x / self.block_size)))
            tables.append(blocks + [0] * (self.max_blocks_per_seq - len(blocks)))
            slots += [blocks[p // self.block_size] * self.block_size + p % self.block_size for p in range(x)]
            start += len(blocks)
        attn.meta = self._metadata(slots, tables, lens, lens, decode_only=False)
        ids = torch.zeros(n, dtype=torch.long, device=self.device)
        pos = torch.cat([torch.arange(x, device=self.device) for x in lens])
        h = self.decoder(ids, pos, attn)
        self.decoder.logits(h[: self.config.max_num_seqs]).float()

    # ---- inputs ----

    def _metadata(self, slots, tables, q_lens, ctx_lens, decode_only: bool) -> AttentionMetadata:
        dev, i32 = self.device, torch.int32
        cu = [0]
        for n in q_lens:
            cu.append(cu[-1] + n)
        return AttentionMetadata(
            slot_mapping=to_device(slots, torch.long, dev),
            block_tables=to_device(tables, i32, dev),
            context_lens=to_device(ctx_lens, i32, dev),
            cu_seqlens_q=to_device(cu, i32, dev),
            max_q_len=max(q_lens),
            max_context_len=max(ctx_lens),
            decode_only=decode_only,
        )

    def _inputs(self, batch: ScheduledBatch, feed: Feed | None):
        """Any batch's inputs (prefill chunks and decodes): ids and positions on the device, the rows that sample
        and their sequences, prompt-logprob rows (seq_id -> (first position, rows)); sets `self.attn.meta`."""
        bs = self.block_size
        ids, pos, slots, ctx, sample_rows, sample_seqs, prompt_rows = [], [], [], [], [], [], {}
        fed = []  # (input row, row of feed.tokens)
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            s, e = seq.num_computed, seq.num_computed + n
            row0 = len(ids)
            ids += seq.token_ids[s:e]
            if ids[-1] == PENDING:
                fed.append((len(ids) - 1, feed.rows[seq.seq_id]))
                ids[-1] = 0
            pos += range(s, e)
            table = seq.block_table
            for b in range(s // bs, (e - 1) // bs + 1):  # the slots of positions s..e-1, a block at a time
                base = table[b] * bs - b * bs  # slot of position p in block b: base + p
                slots += range(base + max(s, b * bs), base + min(e, (b + 1) * bs))
            ctx.append(e)
            if e == seq.num_tokens:
                sample_rows.append(len(ids) - 1)
                sample_seqs.append(seq)
            if seq.params.prompt_logprobs is not None and s < seq.num_prompt_tokens:
                prompt_rows[seq.seq_id] = (s, range(row0, row0 + min(n, seq.num_prompt_tokens - s)))
        self.attn.meta = self._metadata(slots, block_tables(batch.seqs), batch.num_new_tokens, ctx,
                                        batch.is_decode_only)
        dev = self.device
        ids = to_device(ids, torch.long, dev)
        if fed:
            rows, src = to_device(fed, torch.long, dev).unbind(1)
            ids[rows] = feed.tokens[src]
        return ids, to_device(pos, torch.long, dev), sample_rows, sample_seqs, prompt_rows

    def _decode_inputs(self, batch: ScheduledBatch, feed: Feed | None):
        """`_inputs` of a decode-only batch (one new token per sequence, every one sampling), built from int arrays
        in one pass: the eager counterpart of `_run_decode_graph`'s staging."""
        dev, i32, B = self.device, torch.int32, len(batch)
        vec, fed, max_ctx = decode_rows(batch.seqs, feed.rows if feed is not None else {}, B, self.block_size)
        vec = to_device(vec, torch.long, dev)  # (5, B): ids, positions, slots, context lengths, fed rows
        ids = vec[0]
        if fed:
            src = vec[4]
            ids = torch.where(src >= 0, feed.tokens[src.clamp(min=0)], ids)
        self.attn.meta = AttentionMetadata(
            slot_mapping=vec[2], block_tables=to_device(block_tables(batch.seqs), i32, dev),
            context_lens=vec[3].to(i32), cu_seqlens_q=torch.arange(B + 1, dtype=i32, device=dev), max_q_len=1,
            max_context_len=max_ctx, decode_only=True,
        )
        # a prompt's last token computed alone (a one-token last chunk) is a decode too
        prompt_rows = {seq.seq_id: (seq.num_computed, range(i, i + 1)) for i, seq in enumerate(batch.seqs)
                       if seq.num_computed < seq.num_prompt_tokens and seq.params.prompt_logprobs is not None}
        return ids, vec[1], torch.arange(B), list(batch.seqs), prompt_rows

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, feed: Feed | None = None) -> StepLogits:
        """Compute the batch's new tokens; return logits for the sequences that reach their end (they sample).

        A sequence whose last token is still `PENDING` (sampled by the step before, not read back yet) takes it
        from `feed`, on the device.
        """
        for src, dst in batch.block_copies:  # copy-on-write of shared blocks, before anything writes to them
            for kc, vc in zip(self.k_caches, self.v_caches, strict=True):
                kc[dst].copy_(kc[src])
                vc[dst].copy_(vc[src])
        decode_only = batch.is_decode_only
        # a graph returns the sampled rows' logits only: a step with prompt log-probs to make runs eager
        if decode_only and not batch.prompt_logits and self.graphs and len(batch) <= max(self.graphs):
            return self._run_decode_graph(batch, feed)
        dev = self.device
        prepare = self._decode_inputs if decode_only else self._inputs
        ids, pos, sample_rows, sample_seqs, prompt_rows = prepare(batch, feed)  # sets self.attn.meta
        pg = self.prefill_graphs
        if pg is not None and not decode_only and pg.bucket(len(ids)) is not None:
            h = pg.run(ids, pos)  # piecewise CUDA graphs around the attention calls
        else:
            h = self.decoder(ids, pos, self.attn)
        logits = self.decoder.logits(h[to_device(sample_rows, torch.long, dev)]).float()
        prompt_logits = {sid: (s, self.decoder.logits(h[r.start : r.stop]).float())
                         for sid, (s, r) in prompt_rows.items()}
        return StepLogits(logits, sample_seqs, prompt_logits)

    @torch.inference_mode()
    def embed(self, prompts: list[list[int]]) -> Tensor:
        """Mean-pooled, L2-normalized final hidden states, (B, hidden) fp32; prompts packed without a KV cache."""
        from shusheng.model import cu_seqlens_from_lengths, varlen_attention

        out = []
        i = 0
        while i < len(prompts):  # as many prompts per forward as the token budget allows (at least one)
            j, n = i + 1, len(prompts[i])
            while j < len(prompts) and n + len(prompts[j]) <= self.config.max_num_batched_tokens:
                n += len(prompts[j])
                j += 1
            chunk = prompts[i:j]
            lens = [len(p) for p in chunk]
            ids = torch.tensor([t for p in chunk for t in p], device=self.device)
            pos = torch.cat([torch.arange(n, device=self.device) for n in lens])
            attn = varlen_attention(cu_seqlens_from_lengths(lens, self.device), dtype=self.dtype)
            h = self.decoder(ids, pos, attn).float()
            for part in h.split(lens):
                out.append(torch.nn.functional.normalize(part.mean(0), dim=-1))
            i = j
        return torch.stack(out)

    # ---- CUDA graphs ----

    def _graph_sizes(self) -> list[int]:
        top = min(self.config.max_graph_batch_size, self.config.max_num_seqs)
        sizes = [s for s in (1, 2, 4, 8) if s < top] + list(range(16, top, 16)) + [top]
        return sorted(set(sizes))

    @torch.inference_mode()
    def _capture_graphs(self) -> None:
        top = self._graph_sizes()[-1]
        dev, i32 = self.device, torch.int32
        # static inputs of the graphs: a step's rows (`decode_rows`: ids, positions, slots, context lengths, rows
        # of the fed tokens) are staged in one copy as (5, size) for the graph of that size (`_staged`); the graph
        # reads its positions and slots from there, and the ids and int32 context lengths from what
        # `decode_inputs` writes
        self._g_stage = torch.zeros(5 * top, dtype=torch.long, device=dev)
        self._g_ids = torch.zeros(top, dtype=torch.long, device=dev)
        self._g_ctx = torch.ones(top, dtype=i32, device=dev)
        self._g_tables = torch.zeros(top, self.max_blocks_per_seq, dtype=i32, device=dev)
        cu = torch.arange(top + 1, dtype=i32, device=dev)
        pool = None
        for size in reversed(self._graph_sizes()):  # largest first, so smaller graphs reuse its memory pool
            attn = PagedAttention(self.k_caches, self.v_caches, self.ops)
            stage = self._staged(size)
            stage[2].fill_(-1)  # slots: the warm-up and capture write nowhere
            attn.meta = AttentionMetadata(stage[2], self._g_tables[:size], self._g_ctx[:size],
                                          cu[: size + 1], 1, self.max_model_len, decode_only=True)

            def step(size=size, attn=attn, pos=stage[1]):
                return self.decoder.logits(self.decoder(self._g_ids[:size], pos, attn))

            stream = torch.cuda.Stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream):
                step()  # warm-up: kernel compilation and autotuning happen outside the capture
            torch.cuda.current_stream(dev).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = step()
            pool = graph.pool()
            self.graphs[size] = (graph, out)
        torch.cuda.synchronize(dev)

    def release_graphs(self) -> None:
        """Frees the captured graphs (steps then run eager). Under tensor parallelism this must come
        before the process group is destroyed: NCCL's teardown waits for graphs that captured its collectives."""
        if self.graphs or self.prefill_graphs is not None:
            torch.cuda.synchronize(self.device)  # no replay in flight
        for graph, _ in self.graphs.values():
            graph.reset()
        self.graphs.clear()
        if self.prefill_graphs is not None:
            self.prefill_graphs.release()
            self.prefill_graphs = None

    def _run_decode_graph(self, batch: ScheduledBatch, feed: Feed | None) -> StepLogits:
        """A decode-only step (one new token per sequence, every one sampling) as a CUDA-graph replay."""
        bs = self.block_size
        B = len(batch)
        size = next(s for s in sorted(self.graphs) if s >= B)
        graph, out = self.graphs[size]
        # staged inputs, one row each: ids, positions, slots, context lengths, row of the fed token (-1: none);
        # padded columns: token 0 at position 0, written nowhere, attending to one slot
        vec, fed, _ = decode_rows(batch.seqs, feed.rows if feed is not None else {}, size, bs)
        stage = self._staged(size)
        stage.view(-1).copy_(vec.view(-1).pin_memory(), non_blocking=True)  # no stream sync: see to_device
        # ids (the fed ones from the step before's samples, without a round trip through the host), int32 lengths
        decode_inputs(stage, feed.tokens if fed else None, self._g_ids[:size], self._g_ctx[:size])
        width = self.max_blocks_per_seq
        if B * width <= 1 << 16:  # whole rows: one copy into the graph's table
            self._g_tables[:B].copy_(block_tables(batch.seqs, width).pin_memory(), non_blocking=True)
        else:  # the used columns only: less host work for long tables, one more device copy
            tables = block_tables(batch.seqs)
            self._g_tables[:B, : tables.shape[1]].copy_(to_device(tables, torch.int32, self.device))
        graph.replay()
        self.graph_replays += 1
        return StepLogits(out[:B], list(batch.seqs))  # in the model's dtype; the sampler converts what it needs

    def _staged(self, size: int) -> Tensor:
        """The (5, size) staged inputs of the graph for `size` columns (a view of one buffer shared by all)."""
        return self._g_stage[: 5 * size].view(5, size)
