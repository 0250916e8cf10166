from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from shusheng.model.tokenizer import load_tokenizer

# ../shared/data beside the repository checkout (developer and CI machines; absent in a user's checkout)
INTERNLM2_TOKENIZER = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "internlm2_tokenizer.model"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sp_ref():
    """The raw SentencePiece processor of the real InternLM2 tokenizer: the reference for text between specials."""
    if not INTERNLM2_TOKENIZER.is_file():
        pytest.skip(f"InternLM2 tokenizer not found at {INTERNLM2_TOKENIZER} (needs the ../shared/data folder)")
    return spm.SentencePieceProcessor(model_file=str(INTERNLM2_TOKENIZER))


@pytest.fixture(scope="session")
def tok(sp_ref):
    """shusheng's tokenizer over the real InternLM2 tokenizer.model."""
    return load_tokenizer(INTERNLM2_TOKENIZER)
