"""Resume: a run stopped after a checkpoint and resumed ends with the same adapter, bit for bit, as one that never
stopped (data order, adapters, AdamW state, schedule and the RNG behind LoRA dropout all restored)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from shusheng.tuner import Trainer
from shusheng.tuner.data.synthetic import color_records, write_jsonl


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, make_config, method):
    data = write_jsonl(tmp_path / "colors.jsonl", color_records(64))
    common = [f"method={method}", "train.max_steps=6", "train.grad_accum=2", "optim.warmup_steps=2",
              "lora.dropout=0.1", "optim.lr=1e-2", "optim.weight_decay=0.01", "data.max_length=96",
              "data.eval_fraction=0.1"]
    whole = make_config(data, *common, out=tmp_path / "whole")
    Trainer(whole).train()

    split = make_config(data, *common, "train.save_every=2", out=tmp_path / "split")
    Trainer(split).train(stop_at=3)  # "interrupted" after step 3: its checkpoint is the latest
    assert sorted(p.name for p in (split.out_dir / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    resumed = Trainer(split)  # a fresh process would build the same objects from the same config
    assert resumed.resume() == 3
    resumed.train()

    assert [m["loss"] for m in metrics(split.out_dir)] == [m["loss"] for m in metrics(whole.out_dir)]
    if method == "lora":
        a = load_file(whole.out_dir / "adapter" / "adapter_model.safetensors")
        b = load_file(split.out_dir / "adapter" / "adapter_model.safetensors")
    else:
        a = load_file(whole.out_dir / "model" / "model.safetensors")
        b = load_file(split.out_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
