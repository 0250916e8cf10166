"""Scoring responses with a trained reward model (the `score` command).

A reward model is a full model folder with `reward_head.safetensors`, or an adapter folder whose weights file also
holds the head; either may carry `reward_config.json` (condition prompts per domain, template), which scoring
applies exactly as training did. Records are preference pairs (`prompt`/`messages`, `chosen`, `rejected`: both are
scored and the pair counts as right when chosen scores higher) or `prompt`/`messages` with a list of `responses`
(scored and ranked best first).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from shusheng.model import Tokenizer, load_pretrained, load_tokenizer

from .config import Source
from .data import DataError, Preference, encode_pair, load_records, resolve_template
from .data.formats import parse_records
from .data.pack import collate
from .lora import ADAPTER_CONFIG
from .merge import load_merged
from .methods.reward import REWARD_CONFIG_FILE, REWARD_HEAD_FILE, RewardModel


@dataclass
class Scorer:
    """A loaded reward model with what it needs to render conversations as in training."""

    model: RewardModel
    tokenizer: Tokenizer
    template: str
    domains: dict[str, str]
    default_domain: str | None

    def system(self, domain: str | None) -> str | None:
        if not self.domains:
            return None
        domain = domain or self.default_domain
        if domain not in self.domains:
            raise DataError(f"domain {domain!r} has no condition prompt; this reward model knows "
                            f"{sorted(self.domains)}")
        return self.domains[domain]

    @torch.no_grad()
    def score_pair(self, pair: Preference, where: str = "") -> tuple[float, float]:
        """(score of chosen, score of rejected)."""
        chosen, rejected = encode_pair(pair, self.tokenizer, self.template, self.system(pair.domain), where)
        batch = collate([(chosen, rejected)]).to(next(self.model.parameters()).device)
        scores = self.model(batch.input_ids, attention=batch.attention(torch.float32), last=batch.last)
        return float(scores[0]), float(scores[1])


def load_scorer(path: str | Path, base: str | Path | None = None, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = torch.float32) -> Scorer:
    """Loads a reward model folder (full or adapter).

    Raises:
        FileNotFoundError: the folder has no reward head.
    """
    path = Path(path)
    if (path / ADAPTER_CONFIG).is_file():
        backbone, tensors = load_merged(path, base, dtype, device)
    else:
        if not (path / REWARD_HEAD_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a reward model (no {REWARD_HEAD_FILE} and no {ADAPTER_CONFIG})")
        backbone, tensors = load_pretrained(path, dtype=dtype, device=device), load_file(path / REWARD_HEAD_FILE)
    model = RewardModel(backbone)
    model.load_head(tensors)
    tokenizer = load_tokenizer(path if any((path / f).is_file() for f in ("tokenizer.model", "tokenizer.json"))
                               else base)
    config = json.loads((path / REWARD_CONFIG_FILE).read_text()) if (path / REWARD_CONFIG_FILE).is_file() else {}
    template = resolve_template(config.get("template"), tokenizer)
    return Scorer(model.eval(), tokenizer, template, config.get("domains") or {}, config.get("default_domain"))


def score_file(scorer: Scorer, data: str | Path) -> tuple[list[dict], dict]:
    """Scores every record of a file.

    Returns:
        One result per record ({"index", "chosen", "rejected", "correct"} for pairs; {"index", "scores",
        "ranking"} for response lists) and a summary ({"records", "accuracy"} for pairs).

    Raises:
        DataError: records that are neither pairs nor response lists.
    """
    records = load_records(Source(str(data)))
    if records and isinstance(records[0], dict) and "responses" in records[0]:
        results = [_rank(scorer, r, f"{data} record {i}", i) for i, r in enumerate(records)]
        return results, {"records": len(results)}
    parsed = parse_records(records, str(data))
    if parsed.format != "preference":
        raise DataError(f"{data} holds {parsed.format} records; score needs preference pairs (prompt, chosen, "
                        "rejected) or prompts with a list of responses")
    results = []
    for i, pair in enumerate(parsed.examples):
        c, r = scorer.score_pair(pair, parsed.where(i))
        results.append({"index": i, "chosen": c, "rejected": r, "correct": c > r})
    return results, {"records": len(results), "accuracy": sum(r["correct"] for r in results) / len(results)}


def _rank(scorer: Scorer, record: dict, where: str, index: int) -> dict:
    responses = record["responses"]
    if not isinstance(responses, list) or not responses:
        raise DataError(f"{where}: responses must be a non-empty list")
    scores = []
    for response in responses:
        # score each response as the "chosen" half of a pair with itself; only chosen's score is used
        pair = parse_records([{**{k: v for k, v in record.items() if k != "responses"}, "chosen": response,
                               "rejected": response}], where).examples[0]
        scores.append(scorer.score_pair(pair, where)[0])
    ranking = sorted(range(len(scores)), key=lambda i: -scores[i])
    return {"index": index, "scores": scores, "ranking": ranking}
