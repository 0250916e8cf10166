"""SFT on CPU: LoRA learns a task it could not do (greedy generation), QLoRA trains on bitsandbytes NF4 weights
(with activation checkpointing), full bf16 fine-tuning keeps fp32 master weights."""

import json

import bitsandbytes as bnb
import pytest
import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

from shusheng.model import generate, load_pretrained
from shusheng.model.chat import render_ids
from shusheng.tuner import Trainer
from shusheng.tuner.data.synthetic import color_prompts, color_records, write_jsonl
from shusheng.tuner.lora import load_adapter

PROMPTS = color_prompts()


def accuracy(model, tok) -> float:
    """Exact-match accuracy of greedy replies over every prompt of the task."""
    prompts = [render_ids("internlm2", tok, [{"role": "user", "content": q}], add_generation_prompt=True)[0]
               for q, _ in PROMPTS]
    out = generate(model.eval(), prompts, max_new_tokens=8, stop_ids=tok.stop_ids)
    return sum(tok.decode(ids, skip_special_tokens=True) == a for (_, a), ids in zip(PROMPTS, out.token_ids,
                                                                                    strict=True)) / len(PROMPTS)


def test_lora_learns_an_instruction_task(tmp_path, make_config, tiny_base):
    data = write_jsonl(tmp_path / "colors.jsonl", color_records(240))
    cfg = make_config(data, "data.max_length=256", "train.epochs=5", "optim.lr=5e-3", "optim.warmup_steps=5",
                      "data.eval_fraction=0.1")
    trainer = Trainer(cfg)
    tok = trainer.tokenizer
    assert accuracy(trainer.backbone, tok) == 0.0
    layers = [m for m in trainer.backbone.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 5 * trainer.backbone.config.num_layers  # wqkv, wo, w1, w2, w3 of every block
    before = trainer.evaluate()["val_loss"]
    record = trainer.train()
    assert record["val_loss"] < before / 5
    assert accuracy(trainer.backbone, tok) >= 0.9
    # the saved adapter reproduces the trained model on a fresh copy of the base
    fresh = load_pretrained(tiny_base, dtype=torch.float32)
    load_adapter(fresh, cfg.out_dir / "adapter")
    assert accuracy(fresh, tok) >= 0.9
    metrics = [json.loads(line) for line in (cfg.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == trainer.total_steps and "val_loss" in metrics[-1]
    assert json.loads((cfg.out_dir / "data_report.json").read_text())["train"]["packed"] == 216


def test_qlora_trains_on_nf4_weights(tmp_path, make_config):
    data = write_jsonl(tmp_path / "colors.jsonl", color_records(120))
    cfg = make_config(data, "method=qlora", "data.max_length=256", "train.max_steps=15", "optim.lr=1e-2",
                      "data.eval_fraction=0.2", "train.activation_checkpointing=true")
    trainer = Trainer(cfg)
    assert type(trainer.backbone.layers[0]).__name__ == "CheckpointWrapper"  # activation checkpointing per block
    wqkv = trainer.backbone.layers[0]._checkpoint_wrapped_module.attention.wqkv
    assert isinstance(wqkv, LoraLinear4bit)  # peft's LoRA over a bitsandbytes 4-bit layer
    base = wqkv.get_base_layer()
    assert isinstance(base, bnb.nn.Linear4bit) and base.weight.dtype == torch.uint8
    assert base.weight.quant_type == "nf4" and base.weight.quant_state.nested  # double quantization
    assert all(not p.requires_grad for n, p in trainer.backbone.named_parameters() if "lora_" not in n)
    before = trainer.evaluate()["val_loss"]
    record = trainer.train()
    assert record["val_loss"] < 0.8 * before
    assert (cfg.out_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_paged_optimizer_needs_cuda(tmp_path, make_config):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU error")
    data = write_jsonl(tmp_path / "colors.jsonl", color_records(8))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Trainer(make_config(data, "method=qlora", "optim.name=paged_adamw_8bit"))


def test_full_bf16_alone_keeps_fp32_master_weights_through_fsdp(tmp_path, make_config):
    """Full fine-tuning in bf16 on one device shards over a one-process group for FSDP2's mixed precision."""
    from torch.distributed.tensor import DTensor

    from shusheng.tuner import distributed

    data = write_jsonl(tmp_path / "colors.jsonl", color_records(40))
    cfg = make_config(data, "method=full", "train.precision=bf16", "train.max_steps=4", "optim.lr=1e-3",
                      "data.eval_fraction=0.2")
    try:
        trainer = Trainer(cfg)
        w = trainer.backbone.layers[0].attention.wqkv.weight
        assert isinstance(w, DTensor) and w.dtype == torch.float32 and trainer.dist.world == 1
        before = trainer.evaluate()["val_loss"]
        assert trainer.train()["val_loss"] < before
    finally:
        distributed.teardown()
    saved = json.loads((cfg.out_dir / "model" / "config.json").read_text())
    assert saved["torch_dtype"] == "bfloat16"
