"""CUDA graphs for prefill and mixed steps, cut at every attention call ("piecewise", as vLLM captures them).

Run eager, a step that prefills launches about ten kernels per layer, and on a fast card its host work is the step's
length: a 128-token InternLM2-1.8B prefill kept the host busy for 10.2 ms on an H200 while the GPU needed ~2.5 ms,
and decode steps of other requests queued behind it. Decode steps replay whole-model graphs (`ModelRunner`), but a
prefill step's attention depends on its sequences (how many, their lengths and block tables), so its graph is cut
there. For each bucket T of token counts:

- piece 0: embedding, first norm, layer 0's qkv projection and rotary (which stores K and V by slot);
- piece i (1..L-1): layer i-1's output projection, residual add + norm, SwiGLU MLP, add + norm, then layer i's qkv
  projection and rotary;
- piece L: layer L-1's rest, ending in the final norm.

Between pieces the extend-attention kernel runs eager over the real tokens, from the static query buffer the piece
wrote into the static output buffer the next piece reads. A step of N <= T tokens is padded to T: the padded
tokens have position 0 and slot -1 (their K/V are stored nowhere) and every op in the pieces works row by row, so
the real rows are what the eager forward computes (bf16 results may differ in rounding where cuBLAS picks another
kernel for T rows than for N). A replay costs L + 1 graph launches and L attention launches of host work.

Without `capture()` (CPU, tests) `run` executes the same pieces eagerly with the same padding.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

import torch
from torch import Tensor

from .fused_decoder import FusedDecoder
from .paged_attention import PagedAttention


def prefill_graph_sizes(limit: int) -> list[int]:
    """Token buckets up to `limit` (included): powers of two to 256, then steps of 128 to 1024, 256 to 2048 and
    512 beyond, so that padding costs at most ~50% extra rows, where the step is short and host-bound anyway, and
    at most 25% past 512."""
    sizes, s = [], 16
    while s < limit:
        sizes.append(s)
        s = s * 2 if s < 256 else s + (128 if s < 1024 else 256 if s < 2048 else 512)
    return sizes + [limit]


class PrefillGraphs:
    """Piecewise graphs of `decoder` over the paged cache of `attention`, for steps of up to max(sizes) tokens.

    Args:
        decoder: the runner's fused decoder.
        attention: the runner's paged attention; its `meta` describes the step being run.
        sizes: token buckets (`prefill_graph_sizes`).
    """

    def __init__(self, decoder: FusedDecoder, attention: PagedAttention, sizes: list[int]):
        self.decoder, self.attention = decoder, attention
        self.sizes = sorted(sizes)
        self.layers = list(decoder.layers)
        weight = decoder.model.tok_embeddings.weight
        dev, dtype, top = weight.device, weight.dtype, self.sizes[-1]
        kv, group = self.layers[0].heads() if self.layers else (0, 0)
        head_dim = self.layers[0].head_dim if self.layers else 0
        # static inputs (ids, positions, slots) and the attention's static query / key / output buffers, shared by
        # all buckets and layers
        self.ids = torch.zeros(top, dtype=torch.long, device=dev)
        self.positions = torch.zeros(top, dtype=torch.long, device=dev)
        self.slots = torch.full((top,), -1, dtype=torch.long, device=dev)
        self.q = torch.zeros(top, kv * group, head_dim, dtype=dtype, device=dev)
        self.k = torch.zeros(top, kv, head_dim, dtype=dtype, device=dev)
        self.out = torch.zeros(top, kv * group, head_dim, dtype=dtype, device=dev)
        self.graphs: dict[int, tuple[list[torch.cuda.CUDAGraph], Tensor]] = {}  # T -> (pieces, final hidden)
        self.replays = 0
        self.capture_stats: tuple[float, int] | None = None

    def bucket(self, num_tokens: int) -> int | None:
        """The bucket a step of `num_tokens` runs in; None when it is larger than every bucket (eager)."""
        i = bisect.bisect_left(self.sizes, num_tokens)
        return self.sizes[i] if i < len(self.sizes) else None

    def _pieces(self, T: int) -> list[Callable]:
        """The L + 1 pieces of a T-token step; each takes and returns the state carried to the next
        ((residual, inv_freq), and the final hidden states from the last)."""
        dec, ops, layers = self.decoder, self.decoder.ops, self.layers
        ids, pos, slots, a = self.ids[:T], self.positions[:T], self.slots[:T], self.out[:T]
        qk = (self.q[:T], self.k[:T])
        caches = self.attention.k_caches, self.attention.v_caches

        def queries(i: int, normed: Tensor, inv_freq: Tensor) -> None:
            layer = layers[i]
            layer.queries(normed, pos, inv_freq, ops, (caches[0][layer.layer], caches[1][layer.layer], slots), qk)

        def first(_):
            normed, residual, inv_freq = dec.embed(ids, pos)
            if not layers:
                return normed
            queries(0, normed, inv_freq)
            return residual, inv_freq

        def middle(state, i):
            residual, inv_freq = state
            normed, residual = layers[i - 1].after_attention(a, residual, dec.norm_after(i - 1), ops)
            queries(i, normed, inv_freq)
            return residual, inv_freq

        def last(state):
            return layers[-1].after_attention(a, state[0], dec.norm_after(len(layers) - 1), ops)[0]

        pieces = [first] + [lambda s, i=i: middle(s, i) for i in range(1, len(layers))]
        return pieces + [last] if layers else pieces

    def _stage(self, ids: Tensor, positions: Tensor, slots: Tensor, T: int) -> None:
        N = ids.shape[0]
        self.ids[:N].copy_(ids)
        self.positions[:N].copy_(positions)
        self.slots[:N].copy_(slots)
        if T > N:  # padding: position 0 (also for dynamic NTK, which reads the largest), stored nowhere
            self.positions[N:T].zero_()
            self.slots[N:T].fill_(-1)

    @torch.inference_mode()
    def run(self, ids: Tensor, positions: Tensor) -> Tensor:
        """(N,) ids and positions of a step (`attention.meta` set for it, N <= max(sizes)) -> (N, hidden)
        final-normed hidden states: a view of a static buffer when captured, valid until the next `run`."""
        N = ids.shape[0]
        T = self.bucket(N)
        assert T is not None, f"{N} tokens exceed the largest prefill graph ({self.sizes[-1]})"
        meta = self.attention.meta
        assert not meta.decode_only, "decode-only steps replay the decode graphs"
        self._stage(ids, positions, meta.slot_mapping, T)
        q, out = self.q[:N], self.out[:N]
        if T in self.graphs:
            graphs, hidden = self.graphs[T]
            for layer, graph in zip(self.layers, graphs, strict=False):
                graph.replay()
                self.attention.attend(q, layer.layer, out=out)
            graphs[-1].replay()
            self.replays += 1
            return hidden[:N]
        state = None
        for i, piece in enumerate(self._pieces(T)):  # eager, the same pieces
            state = piece(state)
            if i < len(self.layers):
                self.attention.attend(q, self.layers[i].layer, out=out)
        return state[:N]

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first, all into one memory pool of their own (a bucket's temporaries are
        dead between its replays, so smaller buckets reuse them)."""
        dev = self.ids.device
        t0, reserved = time.perf_counter(), torch.cuda.memory_reserved(dev)
        self.slots.fill_(-1)  # the warm-ups and captures store no K/V
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        pool = None
        with torch.cuda.stream(stream):
            for T in reversed(self.sizes):
                pieces = self._pieces(T)
                state = None
                for piece in pieces:  # warm-up: kernel compilation and GEMM tuning happen outside the capture
                    state = piece(state)
                graphs, state = [], None
                for piece in pieces:
                    graph = torch.cuda.CUDAGraph()
                    graph.capture_begin(pool=pool)
                    try:
                        state = piece(state)
                    finally:
                        graph.capture_end()
                    pool = graph.pool()
                    graphs.append(graph)
                self.graphs[T] = (graphs, state)
        torch.cuda.current_stream(dev).wait_stream(stream)
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()  # the warm-ups' blocks, cached for the side stream, which nothing else uses
        # seconds, and bytes the caching allocator holds more than before (the graphs' private pool)
        self.capture_stats = (time.perf_counter() - t0, torch.cuda.memory_reserved(dev) - reserved)

    def release(self) -> None:
        for graphs, _ in self.graphs.values():
            for graph in graphs:
                graph.reset()
        self.graphs.clear()

