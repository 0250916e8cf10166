"""Per-document log-probabilities of the trained tokens of a packed row (for DPO and its reference model)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from shusheng.model.loss import IGNORE_INDEX

from ..data.pack import Batch


def _chunk_logps(head: nn.Module, h: Tensor, labels: Tensor) -> Tensor:
    # h (n, D), labels (n,) -> (n,) log p(label), 0 where the label is ignored
    logits = head(h).float()  # (n, V)
    valid = labels != IGNORE_INDEX
    lp = -F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    return lp * valid


def sequence_logps(model: nn.Module, batch: Batch, attention, chunk_size: int = 1024) -> Tensor:
    """Sum of log p(token) over each document's trained tokens.

    The vocabulary projection runs in chunks of `chunk_size` tokens under activation checkpointing, so at most one
    chunk's (chunk_size, vocab) logits exist at a time in forward and in backward.

    Args:
        model: a `Transformer` (its `output` head is called on the hidden states).
        batch: the packed row.
        attention: the row's varlen attention backend.

    Returns:
        (num_docs,) fp32 log-probabilities, in document order.
    """
    h = model(batch.input_ids, attention=attention, return_hidden=True)[0]  # (T, D)
    labels = batch.labels[0]
    parts = []
    for s in range(0, h.shape[0], chunk_size):
        args = (model.output, h[s : s + chunk_size], labels[s : s + chunk_size])
        parts.append(checkpoint(_chunk_logps, *args, use_reentrant=False) if h.requires_grad else _chunk_logps(*args))
    lp = torch.cat(parts)  # (T,)
    out = torch.zeros(len(batch.lengths), dtype=torch.float32, device=lp.device)
    return out.index_add(0, batch.doc_index(), lp)
