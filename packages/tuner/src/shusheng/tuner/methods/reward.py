"""A conditional reward model as in InternLM2's COOL RLHF (InternLM2 technical report, arXiv:2403.17297, 4.2).

- *Scalar head on the last token*: r(x, y) = w . h_T + b, with h_T the final hidden state at the reply's last token
  (its end-of-turn token), which has seen the whole conversation.
- *Conditional system prompts*: one model serves several preference domains; each record's `domain` picks a
  condition system prompt (`reward.domains`) placed first in the conversation.
- *Ranking loss with difficulty decay* (focal-style): with P = sigmoid(r_chosen - r_rejected),
  L_rank = -(1 - 2 max(0, P - 1/2))^gamma log P, so pairs the model already ranks confidently weigh less.
- *Log-barrier penalty* keeping scores inside (-C, C): L_penalty = -(log(C + r) + log(C - r)), weight lambda
  (the report uses C = 5, lambda = 0.02, gamma = 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shusheng.model import Transformer

from ..data.pack import Batch

HEAD_PREFIX = "reward_head."
REWARD_HEAD_FILE = "reward_head.safetensors"  # beside a full model's weights (an adapter stores the head inside)
REWARD_CONFIG_FILE = "reward_config.json"  # the condition prompts and template scoring must use


class RewardModel(nn.Module):
    """A decoder backbone and a scalar head read at chosen positions."""

    def __init__(self, backbone: Transformer):
        super().__init__()
        self.backbone = backbone
        D = backbone.config.hidden_size
        p = next(backbone.parameters())
        dtype = p.dtype if p.is_floating_point() else torch.float32
        self.score = nn.Linear(D, 1, device=p.device, dtype=torch.float32 if dtype == torch.bfloat16 else dtype)
        with torch.no_grad():  # start every score at 0: inside the barrier, no preference yet
            self.score.weight.zero_()
            self.score.bias.zero_()

    def forward(self, input_ids: Tensor, attention, last: Tensor) -> Tensor:
        """Scores read at flat positions `last` of the (B, T) batch (each document's last reply token).

        Returns:
            (N,) fp32 scores, one per entry of `last`.
        """
        h = self.backbone(input_ids, attention=attention, return_hidden=True)  # (B, T, D)
        h = h.reshape(-1, h.shape[-1])[last].to(self.score.weight.dtype)  # (N, D)
        # a fresh (N,) tensor, not a view: FSDP hooks a module's output for backward, which a view would escape
        return (h @ self.score.weight[0] + self.score.bias).float()

    def head_state_dict(self) -> dict[str, Tensor]:
        """The head's tensors under `reward_head.` names (stored beside the backbone's weights or adapter)."""
        return {HEAD_PREFIX + k: v for k, v in self.score.state_dict().items()}

    def load_head(self, tensors: dict[str, Tensor]) -> None:
        """Loads the head from tensors named `reward_head.weight` / `reward_head.bias`.

        Raises:
            ValueError: the tensors are missing.
        """
        sd = {k.removeprefix(HEAD_PREFIX): v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
        if set(sd) != {"weight", "bias"}:
            raise ValueError(f"no reward head found (expected {HEAD_PREFIX}weight and {HEAD_PREFIX}bias)")
        self.score.load_state_dict({k: v.to(self.score.weight.dtype) for k, v in sd.items()})


def ranking_loss(chosen: Tensor, rejected: Tensor, gamma: float = 2.0, penalty: float = 0.02,
                 bound: float = 5.0) -> tuple[Tensor, dict[str, Tensor]]:
    """COOL RLHF's loss, summed over pairs, and summed metrics.

    Args:
        chosen, rejected: (P,) scores.
        gamma: difficulty-decay exponent (0: the plain ranking loss -log sigmoid(r_c - r_r)).
        penalty: weight of the log barrier (per score, averaged over the pair's two scores).
        bound: the barrier's C; scores are clamped just inside it for the barrier so it stays finite.

    Returns:
        The summed loss and sums of `accuracy` (chosen scored higher), `margin` and `abs_score`.
    """
    diff = chosen - rejected
    p = torch.sigmoid(diff)
    decay = (1 - 2 * (p - 0.5).clamp(min=0)) ** gamma
    rank = -(decay * F.logsigmoid(diff))
    scores = torch.stack([chosen, rejected])  # (2, P)
    inside = scores.clamp(-bound * (1 - 1e-4), bound * (1 - 1e-4))
    barrier = -(torch.log(bound + inside) + torch.log(bound - inside)).mean(0)  # (P,)
    metrics = {"accuracy": (diff > 0).float().sum(), "margin": diff.detach().sum(),
               "abs_score": scores.detach().abs().mean(0).sum()}
    return (rank + penalty * barrier).sum(), metrics


class Reward:
    """Reward-model training over packed pairs; `count` (the normalizer) is the number of pairs in a row."""

    name = "reward"
    unit = "pair"

    def __init__(self, gamma: float, penalty: float, bound: float):
        self.gamma, self.penalty, self.bound = gamma, penalty, bound

    def count(self, batch: Batch) -> int:
        return batch.num_units

    def loss(self, model: RewardModel, batch: Batch, attention) -> tuple[Tensor, dict[str, Tensor]]:
        scores = model(batch.input_ids, attention=attention, last=batch.last)  # (2P,)
        return ranking_loss(scores[0::2], scores[1::2], self.gamma, self.penalty, self.bound)
