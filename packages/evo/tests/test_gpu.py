"""On a GPU: bf16 mixed precision through FSDP2 on one rank, compiled blocks, varlen attention; MFU reported."""

import pytest
import torch

from shusheng.evo import TrainConfig, train
from shusheng.model.training import load_config, read_jsonl


@pytest.mark.gpu
@pytest.mark.parametrize("impl,compile_", [("auto", True), ("flex", False), ("sdpa_loop", False)])
def test_bf16_training_on_gpu(write_config, corpus, tmp_path, impl, compile_):
    cfg = write_config(tmp_path / "c.yaml", corpus, output=str(tmp_path / "run"), steps=30, device="cuda",
                       mixed_precision="bf16", compile=compile_, **{"data.varlen_impl": impl, "optim.lr": 1e-2})
    result = train(load_config(TrainConfig, cfg))
    recs = [r for r in read_jsonl(result.output / "metrics.jsonl") if "loss" in r]
    assert recs[-1]["loss"] < 0.5 * recs[0]["loss"]
    assert recs[-1]["mfu"] is not None and recs[-1]["peak_mem_gb"] > 0
    start = read_jsonl(result.output / "metrics.jsonl")[0]
    assert start["device"] == torch.cuda.get_device_name() and start["peak_flops"] > 1e14
