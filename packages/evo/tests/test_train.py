"""End-to-end runs of the training loop on CPU: learning, exact resume, multi-stage, guards."""

import json

import torch

from shusheng.evo import TrainConfig, load_trained, train
from shusheng.model.training import load_config, read_jsonl


def _run(write_config, corpus, tmp_path, name, **kw):
    cfg = load_config(TrainConfig, write_config(tmp_path / f"{name}.yaml", corpus, output=str(tmp_path / name), **kw))
    return train(cfg)


def test_loss_falls_well_below_its_start(write_config, corpus, tmp_path):
    result = _run(write_config, corpus, tmp_path, "learn", steps=60, eval_interval=30, **{"optim.lr": 1e-2})
    records = [r for r in read_jsonl(result.output / "metrics.jsonl") if "loss" in r]
    first, last = records[0]["loss"], records[-1]["loss"]
    assert first > 5.5  # ~ln(512) at initialization
    assert last < 0.15 * first and result.val_loss < 0.2 * first
    assert records[0]["lr"] < records[5]["lr"]  # warmup
    assert (result.output / "loss.png").is_file() and (result.output / "summary.json").is_file()
    start = read_jsonl(result.output / "metrics.jsonl")[0]
    assert start["event"] == "start" and start["device"] == "cpu" and start["peak_flops"] is None


def test_stop_and_resume_is_bitwise_identical(write_config, corpus, tmp_path):
    kw = dict(steps=10, micro_batch=2, global_batch_tokens=64 * 2 * 2, **{"checkpoint.interval": 3})
    full = _run(write_config, corpus, tmp_path, "full", **kw)
    half = _run(write_config, corpus, tmp_path, "split", exit_after_steps=5, **kw)
    assert half.step == 5
    resumed = _run(write_config, corpus, tmp_path, "split", **kw)
    assert resumed.step == 10 and resumed.loss == full.loss
    a, _ = load_trained(full.output)
    b, _ = load_trained(resumed.output)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    losses = lambda out: [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]  # noqa: E731
    assert losses(full.output) == losses(resumed.output)


def test_stages_change_seq_len_and_rope_base(write_config, corpus, tmp_path):
    stages = [{"seq_len": 32, "steps": 3, "rope_theta": 50000.0, "name": "short"},
              {"seq_len": 128, "steps": 2, "rope_theta": 1000000.0, "micro_batch": 1, "name": "long"}]
    result = _run(write_config, corpus, tmp_path, "stages", stages=stages, **{"checkpoint.interval": 3})
    recs = [r for r in read_jsonl(result.output / "metrics.jsonl") if "loss" in r]
    assert [r["stage"] for r in recs] == [0, 0, 0, 1, 1]
    assert recs[0]["tokens"] == 32 * 4 and recs[-1]["tokens"] == 3 * 32 * 4 + 2 * 128
    model, state = load_trained(result.output)
    assert model.config.rope_theta == 1000000.0
    early, early_state = load_trained(result.output / "checkpoints" / "step-00000003")
    assert early.config.rope_theta == 50000.0 and early_state["data"]["seq_len"] == 32


def test_summary_names_the_checkpoint(write_config, corpus, tmp_path):
    result = _run(write_config, corpus, tmp_path, "sum", steps=2)
    summary = json.loads((result.output / "summary.json").read_text())
    assert summary["step"] == 2 and summary["checkpoint"].endswith("step-00000002")
