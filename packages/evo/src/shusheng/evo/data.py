"""Packed training rows from weighted token sources: deterministic, resumable, split over data-parallel ranks.

Each source is read as an endless stream of its documents, every epoch in a fresh seeded permutation. A row takes
`seq_len + 1` consecutive stream tokens (inputs = the first seq_len, labels = the last seq_len) and the next row
starts at that row's last token, as Megatron's GPT dataset does, so no token is skipped. With
`packing="documents"` a row keeps its document pieces apart: attention restarts at each piece (varlen, positions
from 0) and the label that would cross into the next document is ignored (-100). With `"concat"` rows are plain
causal sequences.

Sources are mixed per row by weight with a deterministic "most behind its share" rule, so token proportions match
the weights exactly over any window, with no random draws to replay. The whole state is a few integers per source
(`state_dict`), saved in checkpoints. Row plans (which pieces go in a row) are computed from document lengths
alone on every rank; a rank reads tokens only for its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .shards import TokenSource

IGNORE_INDEX = -100


@dataclass
class Piece:
    doc: int
    start: int
    end: int


@dataclass
class RowPlan:
    source: int
    pieces: list[Piece]


class _Cursor:
    """Position in one source's stream: epoch, index into that epoch's permutation, token offset in the document."""

    def __init__(self, src: TokenSource, seed: int, idx: int):
        self.src, self.seed, self.idx = src, seed, idx
        self.epoch = self.pos = self.offset = 0
        self._perm_epoch, self._perm = -1, None

    def perm(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.idx, self.epoch])
            order = rng.permutation(len(self.src))
            self._perm = order[self.src.lengths[order] > 0]  # empty documents have nothing to train on
            self._perm_epoch = self.epoch
        return self._perm

    def take(self, n: int, advance: int) -> list[Piece]:
        """Pieces covering the next `n` tokens; the cursor then moves forward by `advance` (<= n) tokens."""
        saved = self.state()
        pieces = self._walk(n)
        self.load(saved)
        self._walk(advance)
        return pieces

    def _walk(self, n: int) -> list[Piece]:
        pieces = []
        while n:
            perm = self.perm()
            doc = int(perm[self.pos])
            length = int(self.src.lengths[doc])
            k = min(length - self.offset, n)
            pieces.append(Piece(doc, self.offset, self.offset + k))
            n -= k
            self.offset += k
            if self.offset == length:
                self.offset, self.pos = 0, self.pos + 1
                if self.pos == len(perm):
                    self.pos, self.epoch = 0, self.epoch + 1
        return pieces

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "offset": self.offset}

    def load(self, s: dict) -> None:
        self.epoch, self.pos, self.offset = s["epoch"], s["pos"], s["offset"]


class PackedStream:
    """Row plans over weighted sources.

    Args:
        sources: the token sources.
        weights: mixture weights (normalized here).
        seq_len: tokens per row (inputs); `set_seq_len` changes it between stages, continuing the streams.
        seed: permutation seed.
    """

    def __init__(self, sources: list[TokenSource], weights: list[float], seq_len: int, seed: int = 0):
        if len(sources) != len(weights) or not sources:
            raise ValueError("need one weight per source and at least one source")
        self.sources = sources
        w = np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self.seq_len = seq_len
        self.cursors = [_Cursor(s, seed, i) for i, s in enumerate(sources)]
        self.rows_taken = [0] * len(sources)

    def set_seq_len(self, seq_len: int) -> None:
        self.seq_len = seq_len

    def next_plan(self) -> RowPlan:
        total = sum(self.rows_taken) + 1
        deficit = self.weights * total - np.asarray(self.rows_taken)
        s = int(np.argmax(deficit))  # the source furthest behind its share (ties: the first)
        self.rows_taken[s] += 1
        return RowPlan(s, self.cursors[s].take(self.seq_len + 1, self.seq_len))

    def read(self, plan: RowPlan) -> tuple[np.ndarray, list[int]]:
        """(seq_len + 1,) tokens of a row and the lengths of its document pieces."""
        src = self.sources[plan.source]
        tokens = np.concatenate([src.read(p.doc, p.start, p.end) for p in plan.pieces])
        return tokens, [p.end - p.start for p in plan.pieces]

    def state_dict(self) -> dict:
        return {"cursors": [c.state() for c in self.cursors], "rows_taken": list(self.rows_taken),
                "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        if len(state["cursors"]) != len(self.cursors):
            raise ValueError(f"checkpoint has {len(state['cursors'])} data sources, the config {len(self.cursors)}; "
                             "resume with the same data.sources")
        for c, s in zip(self.cursors, state["cursors"], strict=True):
            c.load(s)
        self.rows_taken = list(state["rows_taken"])


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), IGNORE_INDEX where no loss is taken
    doc_lengths: list[int] | None  # attention segments over the flattened B*T tokens (None: dense causal rows)
    rows: tuple[int, int]  # global row range of the step this micro-batch belongs to (for error reports)

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def build_batch(stream: PackedStream, plans: list[RowPlan], packing: str, rows: tuple[int, int]) -> Batch:
    """Materialize rows into tensors (inputs, shifted labels, piece lengths for varlen attention)."""
    ids, labels, seg = [], [], []
    T = stream.seq_len
    for plan in plans:
        tokens, lengths = stream.read(plan)
        x, y = tokens[:-1], tokens[1:].copy()
        if packing == "documents":
            ends = np.cumsum(lengths)[:-1] - 1  # last token of each piece but the row's final one
            y[ends[ends < T]] = IGNORE_INDEX
            row_seg = [min(e, T) - s for s, e in zip(np.cumsum([0] + lengths[:-1]), np.cumsum(lengths), strict=True)]
            seg.extend(n for n in row_seg if n > 0)
        ids.append(x)
        labels.append(y)
    return Batch(torch.from_numpy(np.stack(ids)), torch.from_numpy(np.stack(labels)),
                 seg if packing == "documents" else None, rows)
