"""Joining a training job: the device and the process group, the same way for evo and tuner.

Under `torchrun` (WORLD_SIZE > 1) the process joins the job's group (NCCL on GPUs, gloo on CPU). Alone, it can
still make a one-rank group over an in-memory store (no ports, no launcher), for code that needs one: FSDP2's mixed
precision keeps fp32 master weights and computes in bf16 only through a process group.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup_process(device: str = "auto", group_alone: bool = False) -> tuple[int, int, torch.device, bool]:
    """Pick this process's device and join (or make) the process group.

    Args:
        device: "auto" (cuda when available, else cpu), "cuda", "cpu" or a device name; under torchrun the CUDA
            device is the process's LOCAL_RANK.
        group_alone: make a one-rank group when not launched by torchrun.

    Returns:
        (rank, world size, device, whether a process group is in use).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world == 1 and not group_alone:
        return 0, 1, dev, False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if world == 1:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
    return rank, world, dev, True
