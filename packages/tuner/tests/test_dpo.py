"""DPO: the sigmoid loss as written, and on CPU it raises the chosen-minus-rejected margin on held-out pairs."""

import math

import pytest
import torch

from shusheng.model import load_pretrained
from shusheng.tuner import Trainer
from shusheng.tuner.data.synthetic import parity_pairs, write_jsonl
from shusheng.tuner.methods import dpo_loss

HELD_OUT = [n for n in range(100) if n // 10 in (3, 7)]  # every last digit also appears in training
TRAIN = [n for n in range(100) if n // 10 not in (3, 7)]


def test_dpo_loss_matches_the_formula():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.5, -4.0])
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.5)
    logits = [0.5 * ((-3.0 + 3.5) - (-4.0 + 3.5)), 0.5 * ((-5.0 + 4.0) - (-2.0 + 4.0))]
    assert loss.item() == pytest.approx(sum(math.log1p(math.exp(-z)) for z in logits), rel=1e-6)
    assert m["accuracy"].item() == 1 and m["reward_margin"].item() == pytest.approx(sum(logits))
    assert m["logp_margin"].item() == pytest.approx(1.0 - 3.0)


def test_dpo_raises_the_margin_on_held_out_pairs(tmp_path, make_config):
    train = write_jsonl(tmp_path / "train.jsonl", parity_pairs(TRAIN))
    held = write_jsonl(tmp_path / "held.jsonl", parity_pairs(HELD_OUT))
    cfg = make_config(train, "task=dpo", f"data.eval=[{held}]", "data.max_length=256", "train.epochs=3",
                      "optim.lr=2e-3", "dpo.beta=0.1")
    trainer = Trainer(cfg)
    before = trainer.evaluate()
    # the reference is the base with adapters off, and LoRA starts at zero: policy == reference
    assert before["val_reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert before["val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    after = trainer.train()
    # log p(chosen) - log p(rejected) on pairs never trained on, averaged over pairs, in nats
    assert after["val_logp_margin"] > before["val_logp_margin"] + 3.0
    assert after["val_reward_margin"] > 0.3 and after["val_loss"] < math.log(2)


def test_full_dpo_reference_is_a_frozen_copy_of_the_base(tmp_path, make_config, tiny_base):
    train = write_jsonl(tmp_path / "train.jsonl", parity_pairs(TRAIN[:16]))
    cfg = make_config(train, "task=dpo", "method=full", "train.max_steps=3", "optim.lr=1e-3", "data.max_length=256")
    trainer = Trainer(cfg)
    ref = trainer.method.reference.model
    assert ref is not trainer.backbone and not any(p.requires_grad for p in ref.parameters())
    first = trainer.train_step(0)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference before the first update
    trainer.train_step(1)
    base = load_pretrained(tiny_base, dtype=torch.float32).state_dict()
    assert all(torch.equal(v, base[k]) for k, v in ref.state_dict().items())  # the reference never moves
    assert not torch.equal(trainer.backbone.layers[0].attention.wqkv.weight, base["layers.0.attention.wqkv.weight"])
