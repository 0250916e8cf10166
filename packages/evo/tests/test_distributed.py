"""2 processes (torchrun, gloo; FSDP2, then TP) against 1 process with the same global batch; 2-rank checkpoints
load on 1 rank."""

import os
import subprocess
import sys

import torch

from shusheng.evo import load_trained
from shusheng.model.training import read_jsonl


def _train(config, nproc, *overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "shusheng.evo.cli", "train", str(config), *overrides, f"--nproc={nproc}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _losses(out):
    return [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]


def test_two_process_fsdp_matches_one_process(write_config, corpus, tmp_path):
    # global batch = 4 rows of 64: one process accumulates 2 micro-batches of 2, two processes take 2 rows each
    cfg = write_config(tmp_path / "c.yaml", corpus, steps=6, micro_batch=2, global_batch_tokens=256)
    one, two = tmp_path / "one", tmp_path / "two"
    _train(cfg, 1, f"output={one}")
    _train(cfg, 2, f"output={two}", "eval_batches=1")
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 6
    for a, b in zip(l1, l2, strict=True):
        assert abs(a - b) < 1e-5, (l1, l2)
    start = read_jsonl(two / "metrics.jsonl")[0]
    assert start["world_size"] == 2

    # the 2-rank checkpoint loads on one process: same weights as the 1-process run, and training continues
    m1, _ = load_trained(one)
    m2, _ = load_trained(two)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=k)
    _train(cfg, 1, f"output={two}", "steps=8")
    assert len(_losses(two)) == 8

    # tensor parallelism (2 ranks, one data-parallel replica): the same losses, and its checkpoint loads on one
    tp = tmp_path / "tp"
    _train(cfg, 2, f"output={tp}", "parallel.tp=2", "eval_batches=1")
    for a, b in zip(l1, _losses(tp), strict=True):
        assert abs(a - b) < 1e-5, (l1, _losses(tp))
    m3, _ = load_trained(tp)
    for (k, a), b in zip(m1.state_dict().items(), m3.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
