"""Supervised fine-tuning: next-token cross-entropy on the trained tokens of packed rows.

The loss of a row is the *sum* over its trained tokens (the model's fused chunked head, which never holds the full
logits); the trainer divides by the trained tokens of the whole optimizer step, over every micro-batch and process,
so the gradient is the per-token mean however the samples were packed or split.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..data.pack import Batch


class SFT:
    """Cross-entropy on trained tokens; `count` (the normalizer) is the row's trained-token count."""

    name = "sft"
    unit = "token"

    def count(self, batch: Batch) -> int:
        return batch.num_trained

    def loss(self, model: nn.Module, batch: Batch, attention) -> tuple[Tensor, dict[str, Tensor]]:
        """Summed cross-entropy of the row (fp32 scalar) and no extra metrics."""
        return model(batch.input_ids, attention=attention, labels=batch.labels), {}
