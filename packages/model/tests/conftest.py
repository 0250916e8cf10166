from pathlib import Path

import pytest
import torch

# ../shared/data beside the repository root (present on developer and CI machines, absent in a user's checkout)
SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data folder {SHARED_DATA} is absent (it sits beside the repository checkout)")
    return SHARED_DATA
