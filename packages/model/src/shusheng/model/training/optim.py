"""Optimizer and learning-rate schedule builders shared by evo and tuner.

AdamW with weight decay on matrices only (biases, norms and other 1-D parameters are not decayed, as in
InternEvo / torchtitan / nanoGPT), and a warmup-then-decay schedule as a `LambdaLR` multiplier of the peak LR.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULES = ("cosine", "linear", "constant")


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; `weight_decay` applies to parameters with 2+ dims only.

    Args:
        fused: use the fused CUDA kernel; default when every parameter lives on CUDA.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    if fused is None:
        fused = all(p.device.type == "cuda" for p in params)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str = "cosine",
                  min_lr_ratio: float = 0.1) -> float:
    """The LR multiplier (of the peak LR) for optimizer step `step` (0-based).

    Linear warmup from 1/(warmup_steps) to 1 over `warmup_steps`, then `schedule` from 1 down to `min_lr_ratio`
    at `total_steps` ("cosine", "linear") or flat ("constant"); held at `min_lr_ratio` afterwards.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose from {SCHEDULES}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_lr_ratio + (1 - min_lr_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, schedule: str = "cosine",
    min_lr_ratio: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_multiplier` as a LambdaLR (its state_dict holds the step, so it checkpoints and resumes)."""
    if warmup_steps < 0 or total_steps <= 0:
        raise ValueError(f"need warmup_steps >= 0 and total_steps > 0, got {warmup_steps}, {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    lr_multiplier(0, warmup_steps, total_steps, schedule, min_lr_ratio)  # validates the schedule name

    def fn(step: int) -> float:
        return lr_multiplier(step, warmup_steps, total_steps, schedule, min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
