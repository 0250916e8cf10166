"""Acceptance 6 (GPU): the 1.8B preset runs in bf16 and its logits track an fp32 reference."""

import pytest
import torch

from shusheng.model import ModelConfig, build_model, generate


@pytest.mark.gpu
def test_internlm2_1_8b_bf16_forward_matches_fp32():
    cfg = ModelConfig.from_name("internlm2-1.8b")
    ids = torch.randint(0, cfg.vocab_size, (2, 256), device="cuda")
    with torch.no_grad():
        ref = build_model(cfg, device="cuda", dtype=torch.float32)(ids)
        torch.cuda.empty_cache()
        out = build_model(cfg, device="cuda", dtype=torch.bfloat16)(ids).float()
    assert torch.isfinite(out).all()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < 2e-2, rel  # bf16 weights and activations through 24 layers


@pytest.mark.gpu
def test_generate_on_gpu_matches_cpu():
    model = build_model("tiny", seed=9).eval()
    with torch.no_grad():  # well-separated logits, so argmax is not decided by rounding
        for p in model.parameters():
            p.normal_(0, 0.5)
    cpu = generate(model, [[1, 2, 3], [4] * 7], max_new_tokens=8, stop_ids=[]).token_ids
    gpu = generate(model.cuda(), [[1, 2, 3], [4] * 7], max_new_tokens=8, stop_ids=[]).token_ids
    assert gpu == cpu
