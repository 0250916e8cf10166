"""FusedDecoder (the serving forward) computes what shusheng.model's Transformer computes."""

import copy

import pytest
import torch

from shusheng.deploy.fused_decoder import FusedDecoder
from shusheng.deploy.paged_attention import TorchOps, TritonOps
from shusheng.model import ModelConfig, SDPAAttention, build_model


@pytest.mark.parametrize("ops", [TorchOps, TritonOps], ids=["references", "triton"])
@pytest.mark.parametrize("rope", ["none", "dynamic"])
def test_fused_decoder_equals_model(ops, rope):
    if ops is TritonOps:
        pytest.importorskip("triton")
    cfg = ModelConfig.from_name("tiny", hidden_size=96, num_heads=6, num_kv_heads=2, qkv_bias=True, o_bias=True,
                                rope_type=rope, rope_factor=2.0, max_position_embeddings=16)
    model = build_model(cfg, seed=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    ref_model = copy.deepcopy(model)
    ids = torch.randint(0, cfg.vocab_size, (40,))  # past max_position_embeddings: dynamic NTK applies
    pos = torch.arange(40)
    with torch.no_grad():
        ref = ref_model(ids[None], positions=pos[None], return_hidden=True)[0]
        dec = FusedDecoder(model, ops)
        out = dec(ids, pos, SDPAAttention())
        logits = dec.logits(out)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(logits, ref_model.output(ref), atol=1e-4, rtol=1e-4)
    assert not hasattr(model.layers[0].feed_forward, "w1")  # fused into w13, originals released


@pytest.mark.parametrize("max_positions", [16, 12, 17])
def test_dynamic_rope_frequencies_fixed_below_max_position_embeddings(max_positions):
    """With no position reaching max_position_embeddings, dynamic NTK rotary is its base rotary: the decoder
    computes the frequencies once, and its output is bit for bit what it computes with per-step frequencies."""
    cfg = ModelConfig.from_name("tiny", hidden_size=96, num_heads=6, num_kv_heads=2, rope_type="dynamic",
                                rope_factor=2.0, max_position_embeddings=16)
    model = build_model(cfg, seed=4).eval()
    n = min(max_positions, 16)
    ids, pos = torch.randint(0, cfg.vocab_size, (n,)), torch.arange(n)
    with torch.no_grad():
        per_step = FusedDecoder(copy.deepcopy(model), TorchOps)
        fixed = FusedDecoder(model, TorchOps, max_positions=max_positions)
        ref, out = per_step(ids, pos, SDPAAttention()), fixed(ids, pos, SDPAAttention())
    assert per_step.dynamic_rope and fixed.dynamic_rope == (max_positions > 16)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
