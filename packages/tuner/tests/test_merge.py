"""Merge: the merged model's logits equal base + adapter; the Llama-format folder loads in plain transformers."""

import json

import pytest
import torch
import transformers

from shusheng.model import load_pretrained, load_tokenizer
from shusheng.tuner.cli import main
from shusheng.tuner.config import LoraArgs
from shusheng.tuner.lora import PEFT_PREFIX, add_lora, fold_lora_, lora_config, read_adapter, save_adapter
from shusheng.tuner.merge import merge


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_base):
    """An adapter on every target of the tiny base, with random (non-zero) A and B."""
    model = load_pretrained(tiny_base, dtype=torch.float32)
    config = lora_config(LoraArgs(rank=4, alpha=8, targets=["wqkv", "wo", "w1", "w2", "w3"]), str(tiny_base))
    add_lora(model, config, seed=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    save_adapter(model, folder, config, tokenizer=load_tokenizer(tiny_base))
    return folder, model.eval()


IDS = torch.tensor([[1, 8, 40, 77, 90, 120, 7, 200, 33, 5, 61]])


def test_adapter_folder_is_peft_format(adapter):
    folder, _ = adapter
    config, tensors = read_adapter(folder)
    assert config.r == 4 and sorted(config.target_modules) == ["w1", "w2", "w3", "wo", "wqkv"]
    assert f"{PEFT_PREFIX}layers.0.attention.wqkv.lora_A.weight" in tensors
    assert len(tensors) == 2 * 5 * 2  # A and B, 5 targets, 2 layers
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_merged_logits_equal_base_plus_adapter_and_load_in_transformers(adapter, tiny_base, tmp_path):
    folder, with_adapter = adapter
    with torch.no_grad():
        want = with_adapter(IDS)
        base = load_pretrained(tiny_base, dtype=torch.float32)(IDS)
    assert (want - base).abs().max() > 0.1  # the adapter changes the model, so the comparison means something
    out = merge(folder, tmp_path / "merged")  # base recorded in the adapter; the base's format (llama)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert (out / "tokenizer.json").is_file()
    with torch.no_grad():
        ours = load_pretrained(out, dtype=torch.float32)(IDS)
        hf = transformers.LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
        theirs = hf(IDS).logits
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs, want, atol=1e-4, rtol=1e-4)


def test_merge_to_internlm2_format_from_the_cli(adapter, tmp_path, capsys):
    folder, with_adapter = adapter
    assert main(["merge", str(folder), str(tmp_path / "il2"), "--format", "internlm2"]) == 0
    assert json.loads((tmp_path / "il2" / "config.json").read_text())["model_type"] == "internlm2"
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(tmp_path / "il2", dtype=torch.float32)(IDS), with_adapter(IDS),
                                   atol=1e-5, rtol=1e-5)


def test_fold_in_place_keeps_the_dtype(tiny_base):
    model = load_pretrained(tiny_base, dtype=torch.bfloat16)
    add_lora(model, lora_config(LoraArgs(rank=2, alpha=4, targets=["wo"])), seed=0)
    assert fold_lora_(model) == model.config.num_layers
    assert type(model.layers[0].attention.wo) is torch.nn.Linear
    assert model.layers[0].attention.wo.weight.dtype == torch.bfloat16 and not hasattr(model, "peft_config")
