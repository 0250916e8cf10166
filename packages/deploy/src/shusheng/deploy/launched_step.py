"""A launched engine step: what reading its samples back needs, and the samples' way to the host.

`LLMEngine.step()` launches step N+1 before it reads step N back (see `EngineConfig.async_scheduling`); a
`LaunchedStep` is what it keeps of a step in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model_runner import StepLogits
from .sampler import SamplerOutput
from .sampling_params import SamplingParams
from .scheduler import ScheduledBatch


def needs_host_tokens(p: SamplingParams) -> bool:
    """The next step's sampling reads this sequence's output tokens on the host (penalties)."""
    return p.repetition_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)


class HostSamples:
    """A step's samples on their way to the host: copies into pinned memory behind an event (CUDA), or the
    tensors themselves (CPU)."""

    def __init__(self, sampled: SamplerOutput, logprobs: bool):
        parts = [sampled.token_ids]
        if logprobs:
            parts += [sampled.logprobs] + ([sampled.top_token_ids, sampled.top_logprobs]
                                           if sampled.top_token_ids is not None else [])
        self.event = None
        if parts[0].device.type == "cuda":
            parts = [_pinned_copy(t) for t in parts]
            self.event = torch.cuda.Event()
            self.event.record()
        self.token_ids = parts[0]
        self.logprobs = parts[1] if logprobs else None
        self.top_token_ids, self.top_logprobs = (parts[2], parts[3]) if len(parts) == 4 else (None, None)

    def wait(self) -> HostSamples:
        if self.event is not None:
            self.event.synchronize()
        return self


def _pinned_copy(t: torch.Tensor) -> torch.Tensor:
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)


@dataclass
class LaunchedStep:
    """A step launched on the device, and what reading its samples back needs."""

    batch: ScheduledBatch
    step: StepLogits
    choices: list  # the engine's streaming state (`_Choice`) of each sampled row
    positions: list[int]  # where each row's token goes in its sequence's token_ids (a PENDING entry until then)
    sampled: SamplerOutput | None  # on the device
    rows: dict[int, int]  # seq_id -> sampled row
    overlap: bool  # may be read back after the next step is launched
    host: HostSamples | None = None
