"""Direct Preference Optimization (Rafailov et al. 2023) with the sigmoid loss.

For a pair (chosen y_w, rejected y_l) and the policy's and reference's summed log-probabilities of each reply,

    loss = -log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))))

Both replies of a pair sit in the same packed row as two documents (chosen first), so one forward gives both.
The reference is the base model: the same network with its LoRA adapters switched off (no second copy in memory),
or a separate frozen model (full fine-tuning, or an explicit `dpo.reference` checkpoint).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.pack import Batch
from ..lora import adapters_disabled
from .logps import sequence_logps


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Summed sigmoid DPO loss over pairs, and summed metrics.

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: (P,) summed log-probabilities.
        beta: the implicit KL strength.

    Returns:
        The loss summed over the P pairs, and sums of: `accuracy` (implicit reward of chosen > rejected),
        `reward_margin` (beta * the log-ratio difference) and `logp_margin` (policy log p(chosen) - log p(rejected)).
    """
    logits = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))  # (P,)
    metrics = {"accuracy": (logits > 0).float().sum(), "reward_margin": logits.detach().sum(),
               "logp_margin": (policy_chosen - policy_rejected).detach().sum()}
    return -F.logsigmoid(logits).sum(), metrics


class AdapterOffReference:
    """The base model as the reference: the policy itself with its LoRA adapters disabled."""

    def __init__(self, model: nn.Module):
        self.model = model

    @torch.no_grad()
    def __call__(self, batch: Batch, attention) -> Tensor:
        with adapters_disabled(self.model):
            return sequence_logps(self.model, batch, attention)


class ModelReference:
    """A separate frozen model as the reference."""

    def __init__(self, model: nn.Module):
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, batch: Batch, attention) -> Tensor:
        return sequence_logps(self.model, batch, attention)


class DPO:
    """DPO over packed pairs; `count` (the normalizer) is the number of pairs in a row."""

    name = "dpo"
    unit = "pair"

    def __init__(self, beta: float, reference):
        self.beta = beta
        self.reference = reference

    def count(self, batch: Batch) -> int:
        return batch.num_units

    def loss(self, model: nn.Module, batch: Batch, attention) -> tuple[Tensor, dict[str, Tensor]]:
        logp = sequence_logps(model, batch, attention)  # (2P,): chosen, rejected, chosen, ...
        ref = self.reference(batch, attention)
        return dpo_loss(logp[0::2], logp[1::2], ref[0::2], ref[1::2], self.beta)
