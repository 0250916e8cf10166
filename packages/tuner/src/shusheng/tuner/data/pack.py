"""Packing documents into rows of at most `max_length` tokens, and turning a row into a training batch.

A *unit* is what must stay together in one row: one SFT sample, or the chosen and rejected documents of a
preference pair. Units are packed best-fit-decreasing (each goes to the fullest row it still fits, longest first),
which is within a few percent of optimal for the length mixes of chat data. Documents in a row never attend to each
other (`shusheng.model.varlen_attention` over the row's document boundaries, positions restart per document), and
a document's last token predicts nothing, so no loss crosses a boundary.

Nothing is lost silently: a unit longer than `max_length` is truncated (each of its k documents to
`max_length // k` tokens), dropped, or raises, per the `overflow` policy, and `PackReport` counts each case.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from shusheng.model import cu_seqlens_from_lengths, varlen_attention
from shusheng.model.loss import IGNORE_INDEX

from .formats import DataError
from .render import Sample

Unit = tuple[Sample, ...]
OVERFLOW = ("truncate", "drop", "error")


@dataclass
class PackReport:
    """What packing did: counts in and out, the over-long policy's effect, and how full the rows are."""

    units: int  # units in
    packed: int  # units out (in the rows)
    truncated: int  # over-long units shortened (overflow="truncate")
    dropped: int  # over-long units removed (overflow="drop")
    untrained: int  # units removed because a document had no trained token (none to begin with, or truncated away)
    longest: int  # tokens of the longest unit before the policy
    rows: int
    tokens: int  # tokens in the rows
    trained_tokens: int
    max_length: int
    overflow: str

    @property
    def efficiency(self) -> float:
        """Share of the rows' capacity holding tokens (1.0 = no padding-equivalent waste)."""
        return self.tokens / (self.rows * self.max_length) if self.rows else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "efficiency": round(self.efficiency, 4)}

    def summary(self) -> str:
        s = (f"{self.units} in, {self.packed} packed into {self.rows} rows of {self.max_length} "
             f"({self.tokens} tokens, {self.trained_tokens} trained, efficiency {self.efficiency:.1%})")
        if self.truncated or self.dropped or self.untrained:
            s += (f"; longer than max_length ({self.longest} the longest): {self.truncated} truncated, "
                  f"{self.dropped} dropped; {self.untrained} removed with no trained tokens")
        return s


def fit(units: list[Unit], max_length: int, overflow: str) -> tuple[list[Unit], dict[str, int]]:
    """Applies the over-long policy; removes units with a document that has no trained token.

    Returns:
        The kept units (in order) and the counts {"truncated", "dropped", "untrained"}.

    Raises:
        DataError: `overflow="error"` and a unit is too long (the message counts them and names the first).
    """
    if overflow not in OVERFLOW:
        raise ValueError(f"overflow must be one of {OVERFLOW}, got {overflow!r}")
    counts = {"truncated": 0, "dropped": 0, "untrained": 0}
    too_long = [u for u in units if sum(map(len, u)) > max_length]
    if too_long and overflow == "error":
        first = too_long[0]
        raise DataError(f"{len(too_long)} of {len(units)} samples are longer than max_length={max_length} (first: "
                        f"{first[0].where}, {sum(map(len, first))} tokens); raise data.max_length or set "
                        "data.overflow to truncate or drop")
    kept = []
    for unit in units:
        if sum(map(len, unit)) > max_length:
            if overflow == "drop":
                counts["dropped"] += 1
                continue
            cap = max_length // len(unit)
            unit = tuple(Sample(d.ids[:cap], d.trained[:cap], d.where) for d in unit)
            counts["truncated"] += 1
        if any(d.num_trained == 0 for d in unit):
            counts["untrained"] += 1
            continue
        kept.append(unit)
    return kept, counts


def pack(units: list[Unit], max_length: int, overflow: str = "truncate") -> tuple[list[list[Unit]], PackReport]:
    """Packs units into rows of at most `max_length` tokens (best fit, longest first).

    Returns:
        The rows (each a list of units, in input order within the row) and the report.
    """
    kept, counts = fit(units, max_length, overflow)
    lengths = [sum(map(len, u)) for u in kept]
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row), sorted: the first with space >= L is the best fit
    for i in sorted(range(len(kept)), key=lambda i: -lengths[i]):
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k < len(free):
            space, r = free.pop(k)
        else:
            space, r = max_length, len(rows)
            rows.append([])
        rows[r].append(i)
        if space - lengths[i] > 0:
            bisect.insort(free, (space - lengths[i], r))
    packed = [[kept[i] for i in sorted(row)] for row in rows]
    report = PackReport(
        units=len(units), packed=len(kept), longest=max((sum(map(len, u)) for u in units), default=0),
        rows=len(rows), tokens=sum(lengths), trained_tokens=sum(d.num_trained for u in kept for d in u),
        max_length=max_length, overflow=overflow, **counts,
    )
    return packed, report


@dataclass
class Batch:
    """One packed row as tensors: documents back to back in a (1, T) row.

    Attributes:
        input_ids: (1, T) token ids.
        labels: (1, T) next-token targets: labels[t] = input_ids[t + 1] where that token is trained and in the same
            document, else -100 (the fused loss in `Transformer.forward(labels=...)` takes them as they are).
        lengths: document lengths, in order (pairs: chosen, rejected, chosen, rejected, ...).
        last: (num_docs,) position of each document's last trained token (where a reward model reads its score).
        num_trained: how many labels are not -100.
        num_units: samples (SFT) or pairs (DPO, reward) in the row.
    """

    input_ids: Tensor
    labels: Tensor
    lengths: list[int]
    last: Tensor
    num_trained: int
    num_units: int

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.labels.to(device), self.lengths, self.last.to(device),
                     self.num_trained, self.num_units)

    def attention(self, dtype: torch.dtype = torch.bfloat16):
        """The varlen attention backend for this row's document boundaries (on the batch's device). The offsets
        are built and checked on the CPU and copied over, so a GPU step waits on no host sync here."""
        cu = cu_seqlens_from_lengths(self.lengths)
        return varlen_attention(cu, max_seqlen=max(self.lengths), dtype=dtype, device=self.input_ids.device)

    def doc_index(self) -> Tensor:
        """(T,) index of the document each position belongs to."""
        lengths = torch.tensor(self.lengths, device=self.input_ids.device)
        return torch.repeat_interleave(torch.arange(len(self.lengths), device=lengths.device), lengths)


def collate(row: list[Unit]) -> Batch:
    """Turns a packed row into a `Batch` (CPU tensors)."""
    ids, labels, lengths, last = [], [], [], []
    for unit in row:
        for doc in unit:
            start = len(ids)
            ids += doc.ids
            # position t predicts token t + 1; the last position of a document predicts nothing
            labels += [t if m else IGNORE_INDEX for t, m in zip(doc.ids[1:], doc.trained[1:], strict=True)]
            labels.append(IGNORE_INDEX)
            lengths.append(len(doc))
            last.append(start + max(i for i, m in enumerate(doc.trained) if m))
    input_ids = torch.tensor([ids], dtype=torch.long)
    label_t = torch.tensor([labels], dtype=torch.long)
    return Batch(input_ids, label_t, lengths, torch.tensor(last, dtype=torch.long),
                 int((label_t != IGNORE_INDEX).sum()), len(row))
