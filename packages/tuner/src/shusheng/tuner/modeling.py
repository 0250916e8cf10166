"""The base model and tokenizer of a run: a checkpoint folder or a preset with random weights."""

from __future__ import annotations

from pathlib import Path

import torch

from shusheng.model import ModelConfig, Tokenizer, Transformer, build_model, load_pretrained, load_tokenizer

from .config import ModelArgs


def tokenizer_for(args: ModelArgs) -> Tokenizer:
    """The run's tokenizer: `model.tokenizer`, else the checkpoint folder's."""
    return load_tokenizer(args.tokenizer or args.path)


def base_config(args: ModelArgs, tokenizer: Tokenizer) -> ModelConfig:
    """The model config: the checkpoint's, or the preset's with the tokenizer's vocabulary size and special ids (a
    preset has random weights, so it takes the tokenizer's), then `model.overrides`.

    Raises:
        ValueError: the tokenizer has ids the model's vocabulary lacks.
    """
    if args.path is not None:
        cfg = ModelConfig.from_file(args.path)
    else:
        ids = {"vocab_size": tokenizer.vocab_size, "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
               "pad_token_id": tokenizer.pad_id}
        cfg = ModelConfig.from_name(args.preset, **{**ids, **args.overrides})
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                         f"{cfg.vocab_size}; use the model's own tokenizer")
    return cfg


def load_base(args: ModelArgs, tokenizer: Tokenizer, dtype: torch.dtype, device: torch.device | str) -> Transformer:
    """Loads the checkpoint (or builds the preset, seeded) in `dtype` on `device`."""
    cfg = base_config(args, tokenizer)
    if args.path is not None:
        return load_pretrained(Path(args.path), dtype=dtype, device=device)
    return build_model(cfg, device=device, dtype=dtype, seed=args.seed)
