"""On a CUDA GPU: bf16 LoRA, QLoRA with paged 8-bit AdamW, and full fine-tuning (FSDP2 mixed precision) train."""

import pytest
import torch

from shusheng.tuner import Trainer, distributed
from shusheng.tuner.data.synthetic import color_records, write_jsonl

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("method,extra", [("lora", []), ("qlora", ["optim.name=paged_adamw_8bit"]), ("full", [])])
def test_bf16_training_on_gpu(method, extra, tmp_path, make_config):
    data = write_jsonl(tmp_path / "colors.jsonl", color_records(120))
    cfg = make_config(data, f"method={method}", "train.precision=bf16", "train.device=cuda", "train.max_steps=20",
                      "optim.lr=5e-3" if method != "full" else "optim.lr=1e-3", "data.eval_fraction=0.2",
                      "train.activation_checkpointing=true", *extra)
    try:
        trainer = Trainer(cfg)
        before = trainer.evaluate()["val_loss"]
        after = trainer.train()
    finally:
        distributed.teardown()
    assert after["val_loss"] < 0.8 * before
    assert after["tokens_per_s"] > 0 and "mfu" in after
    torch.cuda.synchronize()
