"""The perplexity stage (optional `model` extra): exact perplexity of a tiny LM, thresholds."""

import json
import math

import pytest

from shusheng.corpus.document import Document, Removed
from shusheng.corpus.stages import build_stage


def test_needs_a_model():
    with pytest.raises(ValueError, match="model is required"):
        build_stage({"stage": "perplexity"})


def test_perplexity_of_a_tiny_lm(tmp_path):
    torch = pytest.importorskip("torch")
    model_pkg = pytest.importorskip("shusheng.model", reason="needs the `model` extra (shusheng-model)")
    from shusheng.corpus.tokenize import train_tokenizer

    cfg = model_pkg.ModelConfig.from_name("tiny", vocab_size=300, bos_token_id=1, eos_token_id=2)
    model = model_pkg.build_model(cfg, seed=0)
    model_pkg.save_pretrained(model, tmp_path / "lm", format="llama")  # writes the folder anew: tokenizer after
    train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 10, 300, tmp_path / "lm")
    (tmp_path / "lm" / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    stage = build_stage({"stage": "perplexity", "model": str(tmp_path / "lm"), "max_perplexity": 1e9})
    stage.setup()
    doc = stage.process(Document("a", "the quick brown fox"))
    tok = model_pkg.load_tokenizer(tmp_path / "lm")
    ids = tok.encode("the quick brown fox", add_bos=True)
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, :-1]
    expected = math.exp(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])).item())
    assert doc.metadata["perplexity"] == pytest.approx(expected, rel=1e-5)
    strict = build_stage({"stage": "perplexity", "model": str(tmp_path / "lm"), "max_perplexity": expected / 2})
    assert strict.process(Document("a", "the quick brown fox")) == Removed("perplexity_too_high")
