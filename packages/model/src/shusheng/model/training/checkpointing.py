"""Sharded training checkpoints with `torch.distributed.checkpoint` (DCP): save, keep the last k, resume exactly.

A checkpoint is a folder `step-00000100/` under the run's checkpoint folder:

    .metadata, __*_*.distcp   model and optimizer state (DCP: each rank writes its shards; loading reshards, so a
                              checkpoint saved by 4 ranks loads on 1 or 8)
    trainer_state.pt          rank 0: the scheduler and the caller's state (step, data sampler, config...)
    rng-rank{r}.pt            each rank's random number generators (python, torch CPU and CUDA)

It is written under `step-00000100.tmp`, and renamed by rank 0 after every rank has finished, so a folder without
`.tmp` is always complete; leftovers of a crash mid-save are removed on the next save. Works with and without an
initialized process group (one process), with FSDP2/TP (DTensor) and plain modules alike.
"""

from __future__ import annotations

import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

_STEP_DIR = re.compile(r"step-(\d+)")


def _dcp(fn, state: dict, path: Path) -> None:
    """dcp.save / dcp.load. One process without a process group is a supported use (a single-device run, an
    export), so DCP's warning about it is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        fn(state, checkpoint_id=str(path))


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointManager:
    """Saves and finds checkpoints under `folder`, keeping the newest `keep` (0 = keep all).

    Args:
        folder: the run's checkpoint folder (shared by all ranks).
        keep: how many complete checkpoints to retain.
    """

    def __init__(self, folder: str | Path, keep: int = 2):
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.folder = Path(folder)
        self.keep = keep

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m[1]), p) for p in self.folder.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        state: dict[str, Any] | None = None,
    ) -> Path:
        """Write checkpoint `step` (collective: every rank calls it). Returns the final folder."""
        final = self.folder / f"step-{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if _rank() == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            for stale in self.folder.glob("step-*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        _barrier()
        _dcp(dcp.save, _app_state(model, optimizer), tmp)
        torch.save(rng_state(), tmp / f"rng-rank{_rank()}.pt")
        if _rank() == 0:
            extra = {"step": step, "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "state": state or {}}
            torch.save(extra, tmp / "trainer_state.pt")
        _barrier()
        if _rank() == 0:
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            if self.keep:
                for old in self.checkpoints()[: -self.keep]:
                    shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(
        self,
        path: str | Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        restore_rng: bool = True,
    ) -> dict[str, Any]:
        """Load checkpoint `path` into the (already parallelized) model, optimizer and scheduler.

        Returns:
            The trainer state saved with it: {"step": int, "state": dict}.
        """
        path = Path(path)
        if not (path / ".metadata").is_file():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no .metadata); pick one of "
                                    f"{[p.name for p in self.checkpoints()]}")
        _load_app(path, model, optimizer)
        extra = torch.load(path / "trainer_state.pt", weights_only=False)
        if scheduler is not None and extra.get("scheduler") is not None:
            scheduler.load_state_dict(extra["scheduler"])
        if restore_rng:
            rng = path / f"rng-rank{_rank()}.pt"
            set_rng_state(torch.load(rng if rng.is_file() else path / "rng-rank0.pt", weights_only=False))
        return extra


def _app_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    if optimizer is None:
        msd, _ = get_state_dict(model, [])
        return {"model": msd}
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd}


def _load_app(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Read the model (and optimizer) state of a DCP checkpoint, resharded to this job, into the live objects."""
    app = _app_state(model, optimizer)
    _dcp(dcp.load, app, path)
    set_state_dict(model, optimizer if optimizer is not None else [], model_state_dict=app["model"],
                   optim_state_dict=app.get("optim", {}), options=StateDictOptions(strict=True))


def load_model_weights(path: str | Path, model: nn.Module) -> None:
    """Load only the model weights of a DCP checkpoint into `model` (e.g. one process, for export)."""
    _load_app(Path(path), model, None)
