"""Divergence and out-of-memory guards for training loops."""

from __future__ import annotations

import math
from collections import deque


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class LossGuard:
    """Stops on a non-finite loss and flags spikes: a loss above `spike_factor` x the mean of the last `window`.

    `check` raises `TrainingDiverged` (naming the step and the batch) for NaN/inf and returns a warning string
    for a spike (None otherwise), so the loop can log it and go on.
    """

    def __init__(self, spike_factor: float = 3.0, window: int = 50, min_history: int = 10):
        self.spike_factor, self.min_history = spike_factor, min_history
        self.history: deque[float] = deque(maxlen=window)

    def check(self, loss: float, step: int, batch: str = "") -> str | None:
        where = f"step {step}" + (f" ({batch})" if batch else "")
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss} at {where}; lower the learning rate, raise warmup, or check that batch's data "
                "(resume from the last checkpoint after fixing)"
            )
        warning = None
        if len(self.history) >= self.min_history and self.spike_factor > 0:
            mean = sum(self.history) / len(self.history)
            if loss > self.spike_factor * mean:
                warning = f"loss spike at {where}: {loss:.4f} vs recent mean {mean:.4f}"
        self.history.append(loss)
        return warning


def oom_message(settings: dict[str, object]) -> str:
    """The message for a CUDA out-of-memory error: which settings to lower, with their current values."""
    hints = ", ".join(f"{k}={v}" for k, v in settings.items())
    return (f"CUDA out of memory; lower one of: {hints} (or turn on activation checkpointing / raise the "
            "data-parallel shard size)")
