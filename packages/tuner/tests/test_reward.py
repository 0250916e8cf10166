"""The conditional reward model: COOL RLHF's loss as written; it learns to rank held-out pairs; `score` ranks."""

import json
import math

import pytest
import torch

from shusheng.tuner import Trainer
from shusheng.tuner.cli import main
from shusheng.tuner.data.synthetic import parity_pairs, write_jsonl
from shusheng.tuner.methods import ranking_loss
from shusheng.tuner.score import load_scorer

HELD_OUT = [n for n in range(100) if n // 10 in (3, 7)]
TRAIN = [n for n in range(100) if n // 10 not in (3, 7)]


def test_ranking_loss_matches_the_report():
    c, r = torch.tensor([1.0, -0.5]), torch.tensor([0.0, 0.5])
    plain, _ = ranking_loss(c, r, gamma=0.0, penalty=0.0)
    assert plain.item() == pytest.approx(-sum(math.log(1 / (1 + math.exp(-d))) for d in (1.0, -1.0)), rel=1e-6)
    focal, m = ranking_loss(c, r, gamma=2.0, penalty=0.0)
    p = 1 / (1 + math.exp(-1.0))  # the easy pair is down-weighted by (1 - 2 (p - 1/2))^2; the hard one is not
    want = -((1 - 2 * (p - 0.5)) ** 2) * math.log(p) - math.log(1 - p)
    assert focal.item() == pytest.approx(want, rel=1e-6)
    assert m["accuracy"].item() == 1 and m["margin"].item() == pytest.approx(0.0)
    both, _ = ranking_loss(c, r, gamma=2.0, penalty=0.02, bound=5.0)
    barrier = sum(-(math.log(5 + x) + math.log(5 - x)) / 2 for x in (1.0, 0.0)) + \
        sum(-(math.log(5 + x) + math.log(5 - x)) / 2 for x in (-0.5, 0.5))
    assert both.item() == pytest.approx(want + 0.02 * barrier, rel=1e-6)
    # the barrier grows without bound towards the edge of (-C, C), and stays finite past it (clamped)
    edge, _ = ranking_loss(torch.tensor([4.999]), torch.tensor([0.0]), gamma=0.0, penalty=1.0)
    want = math.log1p(math.exp(-4.999)) + (-(math.log(9.999) + math.log(0.001)) - 2 * math.log(5)) / 2
    assert edge.item() == pytest.approx(want, rel=1e-4)
    past, _ = ranking_loss(torch.tensor([7.0]), torch.tensor([0.0]), gamma=0.0, penalty=1.0)
    assert math.isfinite(past.item())


def test_reward_model_ranks_held_out_pairs_and_scores_them(tmp_path, make_config):
    train = write_jsonl(tmp_path / "train.jsonl", parity_pairs(TRAIN))
    held = write_jsonl(tmp_path / "held.jsonl", parity_pairs(HELD_OUT))
    cfg = make_config(train, "task=reward", f"data.eval=[{held}]", "data.max_length=256", "train.epochs=3",
                      "optim.lr=5e-3")
    trainer = Trainer(cfg)
    assert trainer.evaluate()["val_accuracy"] == 0.0  # the head starts at zero: no pair ranked yet
    after = trainer.train()
    assert after["val_accuracy"] >= 0.8
    assert after["val_abs_score"] < cfg.reward.bound
    # `score` reloads the adapter and the head and agrees with training's evaluation
    adapter = cfg.out_dir / "adapter"
    assert main(["score", str(adapter), "--data", str(held), "--out", str(tmp_path / "scores.jsonl")]) == 0
    scores = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert sum(s["correct"] for s in scores) / len(scores) == pytest.approx(after["val_accuracy"])
    ranked = write_jsonl(tmp_path / "ranked.jsonl", [{"prompt": "Is 34 even?", "responses": ["no", "yes"]}])
    assert main(["score", str(adapter), "--data", str(ranked), "--out", str(tmp_path / "ranks.jsonl")]) == 0
    result = json.loads((tmp_path / "ranks.jsonl").read_text())
    by_pair = next(s for s in scores if s["index"] == HELD_OUT.index(34))
    assert result["scores"] == pytest.approx([by_pair["rejected"], by_pair["chosen"]], abs=1e-5)
    assert result["ranking"] == ([1, 0] if by_pair["correct"] else [0, 1])


def test_condition_prompts_follow_the_domain(tmp_path, make_config):
    records = [{**r, "domain": d} for r, d in zip(parity_pairs([1, 2, 3]), ["math", "chat", None], strict=True)]
    train = write_jsonl(tmp_path / "train.jsonl", records)
    domains = "{math: 'Judge whether the answer is correct.', chat: 'Judge helpfulness.'}"
    cfg = make_config(train, "task=reward", "method=full", "train.max_steps=2", f"reward.domains={domains}",
                      "reward.default_domain=math", "data.max_length=512")
    trainer = Trainer(cfg)
    tok = trainer.tokenizer
    texts = {d.where: tok.decode(d.ids) for row in trainer.data.train for pair in row for d in pair}
    assert "Judge whether the answer is correct." in texts[f"{train} record 0"]
    assert "Judge helpfulness." in texts[f"{train} record 1"]
    assert "Judge whether the answer is correct." in texts[f"{train} record 2"]  # no domain: the default
    trainer.train()
    model = cfg.out_dir / "model"  # full fine-tuning: a Hugging Face folder plus the head and the prompts
    assert (model / "reward_head.safetensors").is_file() and (model / "reward_config.json").is_file()
    scorer = load_scorer(model)
    assert scorer.domains["chat"] == "Judge helpfulness." and scorer.default_domain == "math"
    with pytest.raises(ValueError, match="domain 'legal' has no condition prompt"):
        scorer.system("legal")
