"""Process group, device mesh and the model build + parallelize step for one run.

Launched by `torchrun` the run joins that group (`shusheng.model.training.distributed.setup_process`). A plain single
process on a GPU also gets a one-rank group, so bf16 mixed precision with fp32 master weights always goes through
FSDP2's policy; a single CPU process runs the model as is (the path the bitwise tests use).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from shusheng.model import ModelConfig, Transformer, build_model, load_pretrained
from shusheng.model.parallel import apply_ac, apply_compile, apply_fsdp, apply_tp
from shusheng.model.training import ConfigError
from shusheng.model.training.distributed import setup_process

from .config import TrainConfig


@dataclass
class Env:
    rank: int
    world: int
    device: torch.device
    dp: int  # data-parallel ranks (world / tp)
    dp_rank: int
    mesh: DeviceMesh | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.mesh is not None


def setup(cfg: TrainConfig) -> Env:
    """Join (or make) the process group and build the mesh (dp_replicate, dp_shard, tp)."""
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible")
    rank, world, device, grouped = setup_process("cuda" if want_cuda else "cpu", group_alone=want_cuda)
    if not grouped:
        return Env(0, 1, device, 1, 0, None)
    tp = cfg.parallel.tp
    if world % tp:
        raise ConfigError(f"parallel.tp ({tp}) must divide the number of processes ({world})")
    dp = world // tp
    shard = dp if cfg.parallel.dp_shard == -1 else cfg.parallel.dp_shard
    if shard < 1 or dp % shard:
        raise ConfigError(f"parallel.dp_shard ({cfg.parallel.dp_shard}) must divide the data-parallel ranks ({dp})")
    mesh = init_device_mesh(device.type, (dp // shard, shard, tp), mesh_dim_names=("dp_replicate", "dp_shard", "tp"))
    dp_rank = mesh["dp_replicate"].get_local_rank() * shard + mesh["dp_shard"].get_local_rank()
    return Env(rank, world, device, dp, dp_rank, mesh)


def model_config(cfg: TrainConfig) -> ModelConfig:
    m = cfg.model
    try:
        if m.checkpoint:
            base = ModelConfig.from_file(m.checkpoint)
            return ModelConfig.from_dict({**base.to_dict(), **m.overrides})
        if not m.preset:
            raise ConfigError("model: give a preset name or a checkpoint folder")
        return ModelConfig.from_name(m.preset, **m.overrides)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None


def build(cfg: TrainConfig, env: Env) -> Transformer:
    """The model in fp32 on the run's device, parallelized: TP -> activation checkpointing -> compile -> FSDP2."""
    mcfg = model_config(cfg)
    if cfg.model.checkpoint:
        model = load_pretrained(cfg.model.checkpoint, dtype=torch.float32, device=env.device)
        model.config = model.rotary.cfg = mcfg  # overrides such as rope_theta apply (shapes are the checkpoint's)
    else:
        model = build_model(mcfg, device=env.device, dtype=torch.float32, seed=cfg.seed)
    model.train()
    if cfg.parallel.tp > 1:
        apply_tp(model, env.mesh["tp"])
    apply_ac(model, cfg.activation_checkpointing.mode, cfg.activation_checkpointing.every)
    if cfg.compile:
        apply_compile(model)
    if env.distributed:
        dp_mesh = env.mesh["dp_replicate", "dp_shard"] if env.mesh["dp_replicate"].size() > 1 else env.mesh["dp_shard"]
        # with one shard there is no memory to win by resharding, only copies to lose
        reshard = cfg.parallel.reshard_after_forward and env.mesh["dp_shard"].size() > 1
        apply_fsdp(model, dp_mesh, param_dtype=torch.bfloat16 if cfg.mixed_precision == "bf16" else None,
                   reduce_dtype=torch.float32, reshard_after_forward=reshard)
    return model


def all_reduce_sum(values: list[float], env: Env) -> list[float]:
    """Sum per-replica floats (token counts, loss sums) over the data-parallel ranks (identity without a group).

    The ranks of one tensor-parallel group hold the same batch, so the sum over all ranks counts each batch tp
    times: divide by tp. Counts are exact below 2**53 in float64."""
    if not env.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return (t / (env.world // env.dp)).tolist()
