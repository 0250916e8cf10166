"""Never lose data: outputs are written under a temporary name beside their destination and renamed when complete.

Folders and text/JSON files use `shusheng.model.fileio` (shared with checkpoints and evo); this adds safetensors.
"""

from __future__ import annotations

import os
from pathlib import Path

from shusheng.model.fileio import atomic_dir, write_json, write_text

__all__ = ["atomic_dir", "save_tensors", "write_json", "write_text"]


def save_tensors(path: str | Path, tensors: dict) -> Path:
    """Writes a safetensors file atomically (CPU, contiguous copies of the tensors)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)
    return path
