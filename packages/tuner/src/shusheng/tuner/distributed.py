"""Processes and devices: one process, or several under torchrun with FSDP2 (`shusheng.model.parallel.apply_fsdp`).

    torchrun --nproc-per-node 8 -m shusheng.tuner.cli train configs/sft_full_internlm2_7b.yaml

NCCL on GPUs, gloo on CPU (what the tests use). Parameters are sharded per block, gradients reduced in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from shusheng.model import Transformer
from shusheng.model.parallel import apply_fsdp
from shusheng.model.training.distributed import setup_process


@dataclass
class Dist:
    """This process's place in the job."""

    rank: int
    world: int
    device: torch.device
    mesh: DeviceMesh | None  # 1-D data-parallel mesh when world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce SUM across processes (a no-op alone)."""
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup(device: str = "auto", fsdp_alone: bool = False) -> Dist:
    """Joins the torchrun job when WORLD_SIZE > 1 (initializing the process group once), picks the device.

    Args:
        device: "auto" (cuda when available, else cpu), or a device name.
        fsdp_alone: also shard with FSDP2 when running alone, over a one-process group. Full fine-tuning in bf16
            needs it: FSDP2's mixed precision keeps fp32 master weights and computes with bf16 copies of them.
    """
    rank, world, dev, grouped = setup_process(device, group_alone=fsdp_alone)
    if not grouped:
        return Dist(0, 1, dev, None)
    return Dist(rank, world, dev, init_device_mesh(dev.type, (world,)))


def shard(policy: nn.Module, backbone: Transformer, mesh: DeviceMesh, param_dtype: torch.dtype | None,
          head_apart: bool) -> None:
    """FSDP2 over `mesh`: each block, then the backbone root, then (reward model) the outer module.

    Args:
        policy: the module trained (the backbone itself, or a reward model around it).
        backbone: the `Transformer`.
        param_dtype: the dtype parameters are gathered and computed in (None: as stored).
        head_apart: shard the output head as its own unit, so it can be called outside the backbone's forward
            (DPO computes per-token log-probabilities from the hidden states).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    if head_apart:
        if backbone.config.tie_word_embeddings:
            raise ValueError("DPO under FSDP needs untied embeddings (the output head is sharded on its own)")
        fully_shard(backbone.output, mesh=mesh, mp_policy=mp)
    apply_fsdp(backbone, mesh, param_dtype=param_dtype, reduce_dtype=torch.float32)
    if policy is not backbone:
        fully_shard(policy, mesh=mesh, mp_policy=mp)


def teardown(ok: bool = True) -> None:
    """Leaves the process group: after a barrier when the run went well (no rank tears gloo down while another still
    uses it), at once after an error (a barrier could wait forever for a rank that failed)."""
    if dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()
