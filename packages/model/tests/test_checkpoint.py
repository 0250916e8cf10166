"""Acceptance 2: InternLM2 folders round-trip bit-exactly; InternLM2 <-> Llama naming preserves logits; errors."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from shusheng.model import CheckpointError, ModelConfig, build_model, load_pretrained, save_pretrained
from shusheng.model.checkpoint import read_tensors


def tiny(**kw):
    return build_model(ModelConfig.from_name("tiny", **kw), seed=3)


def randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


def test_internlm2_roundtrip_bit_exact(tmp_path):
    model = randomize(tiny(rope_type="dynamic", rope_factor=2.0, qkv_bias=True, o_bias=True).to(torch.bfloat16))
    save_pretrained(model, tmp_path / "a", format="internlm2")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["model_type"] == "internlm2" and cfg["bias"] is True
    assert cfg["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
    loaded = load_pretrained(tmp_path / "a")
    save_pretrained(loaded, tmp_path / "b", format="internlm2")
    a, b = read_tensors(tmp_path / "a"), read_tensors(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert "model.layers.0.attention.wqkv.weight" in a and "output.weight" in a
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.bfloat16
        assert torch.equal(a[k].view(torch.int16), b[k].view(torch.int16)), k
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == cfg


def test_internlm2_llama_conversion_preserves_logits(tmp_path):
    model = randomize(tiny(num_heads=8, num_kv_heads=2, qkv_bias=True, o_bias=True)).eval()
    ids = torch.randint(0, 512, (2, 33))
    with torch.no_grad():
        ref = model(ids)
    save_pretrained(model, tmp_path / "llama", format="llama")
    names = set(read_tensors(tmp_path / "llama"))
    assert "model.layers.1.self_attn.k_proj.weight" in names and "lm_head.weight" in names
    as_llama = load_pretrained(tmp_path / "llama")
    save_pretrained(as_llama, tmp_path / "il2", format="internlm2")
    back = load_pretrained(tmp_path / "il2")
    with torch.no_grad():
        assert torch.equal(as_llama(ids), ref)
        assert torch.equal(back(ids), ref)
    # the grouped layout really is [q_1..q_g, k, v] per KV head
    wqkv = model.layers[0].attention.wqkv.weight.detach()
    k_proj = read_tensors(tmp_path / "llama")["model.layers.0.self_attn.k_proj.weight"]
    D, g = model.config.head_dim, 4
    assert torch.equal(k_proj[:D], wqkv[g * D:(g + 1) * D])


def test_sharded_save_and_tied_embeddings(tmp_path):
    model = randomize(tiny(tie_word_embeddings=True))
    save_pretrained(model, tmp_path / "s", format="llama", max_shard_size="60KB")
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2 and all((tmp_path / "s" / f).is_file() for f in files)
    assert "lm_head.weight" not in index["weight_map"]
    loaded = load_pretrained(tmp_path / "s")
    assert loaded.output.weight is loaded.tok_embeddings.weight
    ids = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_dtype_cast_and_pytorch_bin(tmp_path):
    model = randomize(tiny())
    save_pretrained(model, tmp_path / "f", format="internlm2")
    sd = read_tensors(tmp_path / "f")
    (tmp_path / "bin").mkdir()
    torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "f" / "config.json").read_text())
    loaded = load_pretrained(tmp_path / "bin", dtype=torch.bfloat16)
    assert loaded.tok_embeddings.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.norm.weight, model.norm.weight.to(torch.bfloat16))


def test_overwrite_is_complete_and_leaves_no_temporaries(tmp_path):
    save_pretrained(randomize(tiny()), tmp_path / "c", format="llama", max_shard_size="60KB")
    save_pretrained(tiny(), tmp_path / "c", format="llama")  # one shard now: old shards must be gone
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def _write(tmp_path, cfg: dict, tensors: dict):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, tmp_path / "model.safetensors")


def test_errors_name_the_problem(tmp_path):
    model = tiny()
    save_pretrained(model, tmp_path / "ok", format="internlm2")
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    sd = read_tensors(tmp_path / "ok")

    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        _write(tmp_path / "gpt2", {**cfg, "model_type": "gpt2"}, sd)
        load_pretrained(tmp_path / "gpt2")
    missing = {k: v for k, v in sd.items() if k != "model.layers.1.ffn_norm.weight"}
    _write(tmp_path / "missing", cfg, missing)
    with pytest.raises(CheckpointError, match=r"missing tensors: \['layers.1.ffn_norm.weight'\]"):
        load_pretrained(tmp_path / "missing")
    _write(tmp_path / "extra", cfg, {**sd, "model.layers.0.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected tensors: \['layers.0.extra.weight'\]"):
        load_pretrained(tmp_path / "extra")
    _write(tmp_path / "shape", {**cfg, "intermediate_size": 100}, sd)
    with pytest.raises(CheckpointError, match="shape mismatches.*feed_forward.w1.weight: checkpoint"):
        load_pretrained(tmp_path / "shape")
    with pytest.raises(FileNotFoundError, match="no weights"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text(json.dumps(cfg))
        load_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="format='qwen2'"):
        save_pretrained(tiny(qkv_bias=True), tmp_path / "x", format="llama")


def test_safetensors_metadata_for_transformers(tmp_path):
    save_pretrained(tiny(), tmp_path / "m", format="llama")
    with safe_open(tmp_path / "m" / "model.safetensors", framework="pt") as h:
        assert h.metadata() == {"format": "pt"}
    gen = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2
