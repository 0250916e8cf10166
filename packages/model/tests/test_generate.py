"""The reference generator: KV-cached greedy equals full recomputation and transformers' generate."""

import pytest
import torch

from shusheng.model import build_model, generate, load_pretrained


def naive_greedy(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_batched_greedy_equals_recompute_per_prompt():
    model = build_model("tiny", seed=5).eval()
    prompts = [[1, 5, 9], [7] * 11, [3, 100, 200, 300, 2, 4], [42]]
    out = generate(model, prompts, max_new_tokens=12, stop_ids=[])
    assert out.finish_reasons == ["length"] * 4
    for p, got in zip(prompts, out.token_ids, strict=True):
        assert got == naive_greedy(model, p, 12)


def test_stop_ids_and_logprobs():
    model = build_model("tiny", seed=5).eval()
    full = generate(model, [1, 5, 9], max_new_tokens=8, stop_ids=[]).token_ids[0]
    stop = full[3]
    out = generate(model, [1, 5, 9], max_new_tokens=8, stop_ids=[stop])
    assert out.token_ids[0] == full[: full.index(stop) + 1] and out.finish_reasons == ["stop"]
    assert all(lp <= 0 for lp in out.logprobs[0]) and len(out.logprobs[0]) == len(out.token_ids[0])


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = build_model("tiny", seed=5).eval()
    a = generate(model, [[1, 2], [3]], max_new_tokens=10, temperature=1.0, seed=7, stop_ids=[]).token_ids
    b = generate(model, [[1, 2], [3]], max_new_tokens=10, temperature=1.0, seed=7, stop_ids=[]).token_ids
    c = generate(model, [[1, 2], [3]], max_new_tokens=10, temperature=1.0, seed=8, stop_ids=[]).token_ids
    assert a == b and a != c
    greedy = generate(model, [[1, 2]], max_new_tokens=10, stop_ids=[]).token_ids
    assert generate(model, [[1, 2]], max_new_tokens=10, temperature=0.7, top_k=1, stop_ids=[]).token_ids == greedy
    tiny_p = generate(model, [[1, 2]], max_new_tokens=10, temperature=0.7, top_p=1e-6, seed=1, stop_ids=[])
    assert tiny_p.token_ids == greedy


def test_errors():
    model = build_model("tiny")
    with pytest.raises(ValueError, match="need a tokenizer"):
        generate(model, "hello")
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []])


def test_equals_transformers_generate(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    ref.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    prompt = [1, 17, 42, 99, 5]
    hf = ref.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, min_new_tokens=20,
                      pad_token_id=0)[0, len(prompt):].tolist()
    assert generate(ours, prompt, max_new_tokens=20, stop_ids=[]).token_ids[0] == hf
