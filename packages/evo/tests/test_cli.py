"""The CLI: bad input is one line and exit code 2; a diverging run names the step; estimate sizes a run."""

import json

import pytest

from shusheng.evo.cli import main


@pytest.mark.parametrize("override,match", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("micro_batch=0", "micro_batch must be >= 1"),
    ("data.packing=zigzag", "data.packing must be 'documents' or 'concat'"),
    ("global_batch_tokens=100", "global_batch_tokens (100) must be a multiple"),
    ("compile=true", "compile=true with data.packing=documents needs a compilable varlen attention kernel"),
])
def test_bad_config_is_one_line_and_exit_2(write_config, corpus, tmp_path, capsys, override, match):
    cfg = write_config(tmp_path / "c.yaml", corpus)
    assert main(["train", str(cfg), override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err


def test_missing_shards_are_exit_2(write_config, corpus, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", corpus)
    assert main(["train", str(cfg), f"data.sources=[{{path: {tmp_path}/nope}}]"]) == 2
    assert "no token shards at" in capsys.readouterr().err


def test_nan_loss_stops_with_the_step(write_config, corpus, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", corpus, steps=30)
    assert main(["train", str(cfg), "optim.lr=1e6", "optim.grad_clip=0", "optim.warmup_steps=0",
                 "spike_factor=0"]) == 1
    err = capsys.readouterr().err
    assert "loss is nan at step" in err or "loss is inf at step" in err
    assert "global rows" in err


def test_estimate(write_config, corpus, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", corpus)
    assert main(["estimate", str(cfg), "model.preset=internlm2-1.8b", "seq_len=4096", "micro_batch=2", "--gpus",
                 "8", "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert abs(e["params"] / 1e9 - 1.889) < 0.01 and e["dp"] == 8
    m = e["stages"][0]["memory_gib"]
    assert abs(m["states"] - 1.889e9 * 16 / 8 / 2**30) < 0.01 and m["activations"] > 0
    assert main(["estimate", str(cfg), "model.preset=internlm2-1.8b", "activation_checkpointing.mode=full"]) == 0
    assert "GFLOP/token" in capsys.readouterr().out


def test_a_loss_spike_is_reported_with_step_and_rows(write_config, corpus, tmp_path, capsys):
    # spike_factor 0.5 flags any loss above half the recent mean: the reporting path, end to end
    cfg = write_config(tmp_path / "c.yaml", corpus, steps=14)
    assert main(["train", str(cfg), "spike_factor=0.5"]) == 0
    err = capsys.readouterr().err
    assert "warning: loss spike at step 11 (stage 0, global rows 40-43)" in err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss spike at step 11" in r.get("warning", "") for r in records)
