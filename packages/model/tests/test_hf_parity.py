"""Acceptance 1: logits parity with transformers' LlamaForCausalLM, both directions through checkpoint folders."""

import pytest
import torch

from shusheng.model import load_pretrained, save_pretrained

transformers = pytest.importorskip("transformers")

ROPES = [
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
    None,
]


def hf_llama(rope, tie=False, bias=False, seed=0):
    torch.manual_seed(seed)
    kw = dict(rope_scaling=rope) if rope else {}
    cfg = transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, rope_theta=10000.0, tie_word_embeddings=tie,
        attention_bias=bias, rms_norm_eps=1e-6, **kw,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norms and biases too, so a mix-up between tensors shows
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.normal_(1.0 if "norm" in n else 0.0, 0.1)
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("rope", ROPES, ids=lambda r: r["rope_type"] if r else "none")
def test_load_transformers_checkpoint(tmp_path, rope):
    ref = hf_llama(rope)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    assert ours.config.model_type == "llama" and ours.config.num_kv_heads == 2
    ids = torch.randint(0, 300, (2, 80))  # longer than max_position_embeddings (32): dynamic NTK kicks in
    with torch.no_grad():
        diff = (ours(ids) - hf_logits(ref, ids)).abs().max().item()
    assert diff <= 1e-4, diff


@pytest.mark.parametrize("tie,bias", [(False, False), (True, True)])
def test_our_llama_save_loads_in_transformers(tmp_path, tie, bias):
    ref = hf_llama(ROPES[0], tie=tie, bias=bias, seed=1)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    save_pretrained(ours, tmp_path / "ours", format="llama")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(back).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 300, (1, 70))
    with torch.no_grad():
        diff = (ours(ids) - hf_logits(back, ids)).abs().max().item()
    assert diff <= 1e-4, diff


def test_qwen2_checkpoint(tmp_path):
    torch.manual_seed(2)
    cfg = transformers.Qwen2Config(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
    )
    ref = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.2)
    ref.save_pretrained(tmp_path / "q")
    ours = load_pretrained(tmp_path / "q")
    assert ours.config.qkv_bias and not ours.config.o_bias
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max().item() <= 1e-4
