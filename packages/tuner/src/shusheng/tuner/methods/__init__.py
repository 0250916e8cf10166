"""Training objectives: each turns a packed row into a summed loss and summed metrics, plus the count (tokens or
pairs) the trainer normalizes by. SFT (cross-entropy), DPO (sigmoid loss against a reference), and a conditional
reward model (ranking loss with difficulty decay and a log-barrier penalty)."""

from .dpo import DPO, AdapterOffReference, ModelReference, dpo_loss
from .logps import sequence_logps
from .reward import Reward, RewardModel, ranking_loss
from .sft import SFT

__all__ = [
    "DPO",
    "SFT",
    "AdapterOffReference",
    "ModelReference",
    "Reward",
    "RewardModel",
    "dpo_loss",
    "ranking_loss",
    "sequence_logps",
]
