"""FSDP2 on 2 CPU processes (gloo, launched by torchrun through the CLI) ends where one process does: full SFT, DPO
with LoRA (adapters gathered from shards, the head sharded apart), a full reward model (the outer module sharded)."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from shusheng.tuner import Trainer
from shusheng.tuner.data.synthetic import color_records, parity_pairs, write_jsonl

CASES = {  # task, method, data, output file
    "sft-full": ("sft", "full", "colors", "model/model.safetensors"),
    "dpo-lora": ("dpo", "lora", "pairs", "adapter/adapter_model.safetensors"),
    "reward-full": ("reward", "full", "pairs", "model/reward_head.safetensors"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp_two_processes_match_one(case, tmp_path, make_config, tiny_base):
    task, method, kind, output = CASES[case]
    records = color_records(48) if kind == "colors" else parity_pairs(list(range(24)))
    data = write_jsonl(tmp_path / "data.jsonl", records)
    common = [f"task={task}", f"method={method}", "train.max_steps=3", "optim.lr=1e-3", "data.max_length=160",
              "optim.warmup_steps=1"]
    # one process, 2 rows per step; two processes, 1 row each per step: the same rows, the same normalization
    one = make_config(data, *common, "train.grad_accum=2", out=tmp_path / "one")
    Trainer(one).train()
    args = [f"model.path={tiny_base}", f"data.train=[{data}]", "train.precision=fp32", "train.device=cpu",
            f"out={tmp_path / 'two'}", "lora.rank=8", "lora.alpha=16", *common, "train.grad_accum=1"]
    config = tmp_path / "fsdp.yaml"
    config.write_text(f"task: {task}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "shusheng.tuner.cli", "train", str(config), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = load_file(tmp_path / "one" / output), load_file(tmp_path / "two" / output)
    assert a.keys() == b.keys() and a
    assert any(v.abs().sum() > 0 for v in a.values())  # it trained (LoRA B and the reward head start at zero)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4)
