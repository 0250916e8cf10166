"""Export a training checkpoint (DCP, any number of ranks) to a Hugging Face folder, on one process."""

from __future__ import annotations

from pathlib import Path

import torch

from shusheng.model import ModelConfig, Transformer, load_tokenizer, save_pretrained
from shusheng.model.training import CheckpointManager, ConfigError, load_model_weights


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (`step-N/`), or a run's checkpoint folder / output folder (its newest checkpoint)."""
    path = Path(path)
    if (path / ".metadata").is_file():
        return path
    for folder in (path, path / "checkpoints"):
        latest = CheckpointManager(folder).latest()
        if latest is not None:
            return latest
    raise ConfigError(f"no checkpoint at {path}: give a step-N folder, a checkpoints folder or a run's output folder")


def load_trained(path: str | Path) -> tuple[Transformer, dict]:
    """The trained model (fp32, CPU) and the saved trainer state of a checkpoint."""
    path = resolve_checkpoint(path)
    state = torch.load(path / "trainer_state.pt", weights_only=False)["state"]
    cfg = ModelConfig.from_dict(state["model_config"])
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device="cpu")
    model.tie_weights()
    load_model_weights(path, model)
    return model.eval(), state


def export(path: str | Path, output: str | Path, format: str = "llama", tokenizer: str | None = None,
           dtype: str = "bfloat16") -> Path:
    """Write the checkpoint's model as a Hugging Face folder (with tokenizer files when one is known).

    Args:
        tokenizer: a tokenizer file or folder; default the run's `model.tokenizer`, else its `model.checkpoint`.
        dtype: weights dtype in the export.
    """
    model, state = load_trained(path)
    m = state["config"]["model"]
    tok_path = tokenizer or m.get("tokenizer") or m.get("checkpoint")
    tok = load_tokenizer(tok_path) if tok_path else None
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ConfigError(f"--dtype must be bfloat16, float16 or float32, got {dtype!r}")
    return save_pretrained(model, output, format=format, tokenizer=tok, dtype=getattr(torch, dtype))
