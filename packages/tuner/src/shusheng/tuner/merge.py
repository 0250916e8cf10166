"""Merge a LoRA adapter into its base checkpoint and export a Hugging Face folder (Llama or InternLM2 naming).

The base is loaded once (on the CPU, in its stored dtype unless asked otherwise), the adapter injected, and each
LoRA layer folded into its base weight in place, one layer at a time (`lora.fold_lora_`: W += (alpha / r) B A,
computed in fp32 and rounded once), so the model is never held twice. The result is written atomically with the
tokenizer by `shusheng.model.save_pretrained`; a Llama-format folder loads in plain `transformers`. A reward model's
head, stored in the adapter, is written beside the weights as `reward_head.safetensors`.

An adapter trained with QLoRA is merged into the 16-bit base (not the 4-bit one it trained against): the usual
practice, which keeps the export a plain 16-bit checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from shusheng.model import Transformer, load_pretrained, load_tokenizer, save_pretrained

from .io import save_tensors, write_json
from .lora import ADAPTER_CONFIG, fold_lora_, load_adapter
from .methods.reward import HEAD_PREFIX, REWARD_CONFIG_FILE, REWARD_HEAD_FILE


def adapter_base(adapter: str | Path) -> str:
    """The base checkpoint recorded in an adapter's config (`base_model_name_or_path`).

    Raises:
        FileNotFoundError: no adapter config.
        ValueError: the adapter does not record its base.
    """
    config = Path(adapter) / ADAPTER_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"{adapter} is not an adapter folder (no {ADAPTER_CONFIG})")
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config} does not name its base model; pass the base checkpoint folder explicitly")
    return base


def load_merged(adapter: str | Path, base: str | Path | None = None, dtype: torch.dtype | None = None,
                device: str | torch.device = "cpu") -> tuple[Transformer, dict[str, torch.Tensor]]:
    """The base checkpoint with the adapter folded in.

    Returns:
        The model (eval mode) and the adapter's other tensors (a reward head), by name.
    """
    model = load_pretrained(base or adapter_base(adapter), dtype=dtype, device=device)
    extra = load_adapter(model, adapter)
    fold_lora_(model)
    return model.eval(), extra


def merge(adapter: str | Path, out: str | Path, base: str | Path | None = None, format: str | None = None,
          dtype: torch.dtype | None = None) -> Path:
    """Folds `adapter` into its base and writes a Hugging Face folder with the tokenizer.

    Args:
        adapter: the adapter folder (`adapter_config.json`, `adapter_model.safetensors`).
        out: the folder to write (replaced atomically if it exists).
        base: the base checkpoint folder; default the one the adapter records.
        format: "llama" (loads in plain transformers) or "internlm2"; default the base's own.
        dtype: the exported dtype; default the base's.

    Returns:
        The written folder.
    """
    base = base or adapter_base(adapter)
    model, extra = load_merged(adapter, base, dtype)
    tokenizer = None
    for folder in (Path(base), Path(adapter)):
        try:
            tokenizer = load_tokenizer(folder)
            break
        except FileNotFoundError:
            continue
    out = save_pretrained(model, out, format=format or model.config.model_type, tokenizer=tokenizer)
    heads = {k: v for k, v in extra.items() if k.startswith(HEAD_PREFIX)}
    if heads:
        save_tensors(Path(out) / REWARD_HEAD_FILE, heads)
        if (Path(adapter) / REWARD_CONFIG_FILE).is_file():
            write_json(Path(out) / REWARD_CONFIG_FILE, json.loads((Path(adapter) / REWARD_CONFIG_FILE).read_text()))
    return Path(out)
