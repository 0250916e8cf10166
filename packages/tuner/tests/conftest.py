from pathlib import Path

import pytest
import torch

from shusheng.model import ModelConfig, build_model, load_tokenizer, save_pretrained
from shusheng.tuner.config import load

TUNER = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = TUNER / "configs" / "tiny"  # the byte-level tokenizer the tiny example configs use
# ../shared/data beside the repository checkout (developer and CI machines; absent in a user's checkout)
SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
INTERNLM2_TOKENIZER = SHARED / "internlm2_tokenizer.model"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def internlm2_tok():
    """shusheng's tokenizer over the real InternLM2 tokenizer.model."""
    if not INTERNLM2_TOKENIZER.is_file():
        pytest.skip(f"InternLM2 tokenizer not found at {INTERNLM2_TOKENIZER} (needs the ../shared/data folder)")
    return load_tokenizer(INTERNLM2_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_tok():
    return load_tokenizer(TINY_TOKENIZER)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tiny_tok):
    """A tiny random InternLM2-shaped checkpoint in Llama format with the byte tokenizer. Weights are drawn with
    std 0.2 (not 0.02) so that a frozen random output head can still express confident predictions through LoRA."""
    ids = dict(bos_token_id=tiny_tok.bos_id, eos_token_id=tiny_tok.eos_id, pad_token_id=tiny_tok.pad_id)
    cfg = ModelConfig.from_name("tiny", vocab_size=tiny_tok.vocab_size, initializer_range=0.2, **ids)
    folder = tmp_path_factory.mktemp("base") / "tiny"
    save_pretrained(build_model(cfg, seed=0), folder, format="llama", tokenizer=tiny_tok)
    return folder


@pytest.fixture
def make_config(tmp_path, tiny_base):
    """`make_config(data, *overrides)`: a config for the tiny base, fp32 on CPU, writing under tmp_path/run."""

    def make(train, *overrides, out=None):
        args = [f"model.path={tiny_base}", f"data.train=[{train}]", "data.max_length=128", "train.precision=fp32",
                "train.device=cpu", f"out={out or tmp_path / 'run'}", "lora.rank=8", "lora.alpha=16"]
        return load(None, args + list(overrides))

    return make
