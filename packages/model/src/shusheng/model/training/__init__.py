"""Training building blocks shared by evo (pretraining) and tuner (fine-tuning).

configs (dataclass trees from YAML + key=value), optim (AdamW, warmup + cosine), flops (FLOPs/token, peak, MFU),
checkpointing (DCP sharded checkpoints with exact resume), metrics (JSONL, progress, loss curve), guards (NaN,
spikes, OOM hints).
"""

from .checkpointing import CheckpointManager, load_model_weights
from .configs import ConfigError, from_dict, load_config, to_dict
from .flops import flops_per_token, mfu, peak_flops
from .guards import LossGuard, TrainingDiverged, oom_message
from .metrics import MetricsLogger, Progress, plot_loss_curve, read_jsonl
from .optim import build_optimizer, build_scheduler, lr_multiplier

__all__ = [
    "CheckpointManager",
    "ConfigError",
    "LossGuard",
    "MetricsLogger",
    "Progress",
    "TrainingDiverged",
    "build_optimizer",
    "build_scheduler",
    "flops_per_token",
    "from_dict",
    "load_config",
    "load_model_weights",
    "lr_multiplier",
    "mfu",
    "oom_message",
    "peak_flops",
    "plot_loss_curve",
    "read_jsonl",
    "to_dict",
]
