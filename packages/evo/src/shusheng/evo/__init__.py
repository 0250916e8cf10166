"""shusheng.evo: pretraining on packed Megatron token shards, one to many GPUs (FSDP2, TP), resumable.

`train(cfg)` runs the loop; `load_config` reads a YAML config with overrides; `export` writes a Hugging Face
folder from a checkpoint; `estimate` sizes a run before launching it.
"""

from .config import DataSection, ModelSection, Source, Stage, TrainConfig, plan_stages
from .data import PackedStream, build_batch
from .estimate import estimate
from .export import export, load_trained
from .shards import Shard, TokenSource
from .train import RunResult, train

__all__ = [
    "DataSection",
    "ModelSection",
    "PackedStream",
    "RunResult",
    "Shard",
    "Source",
    "Stage",
    "TokenSource",
    "TrainConfig",
    "build_batch",
    "estimate",
    "export",
    "load_trained",
    "plan_stages",
    "train",
]
__version__ = "0.1.0"
