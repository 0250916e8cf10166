"""LoRA adapters on shusheng's `Transformer`, through `peft`.

`add_lora` freezes the model and lets peft swap the chosen linear layers of every block (`wqkv`, `wo`, `w1`, `w2`,
`w3`) for LoRA layers (`W x + (alpha / r) * B A x`, B initialized to zero so training starts from the base model).
The model stays our `Transformer` (peft's `inject_adapter_in_model`, not a `PeftModel` wrapper), so the parallelize
plans of `shusheng.model.parallel` apply to it unchanged. Adapter weights are kept in fp32 (master weights) whatever
the base dtype; under bf16 autocast they compute in bf16.

An adapter folder is peft's format: `adapter_config.json` and `adapter_model.safetensors` with keys
`base_model.model.<module>.lora_A.weight`, so `peft.PeftModel.from_pretrained(transformer, folder)` reads it too.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.tensor import DTensor

from .config import LoraArgs
from .io import atomic_dir

if TYPE_CHECKING:
    from peft import LoraConfig

# peft (and transformers, which it imports) load on first use, so that full fine-tuning and light commands start
# seconds sooner.

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# wrapper prefixes that activation checkpointing and torch.compile put into parameter names
_WRAPPERS = re.compile(r"(_checkpoint_wrapped_module|_orig_mod|_fsdp_wrapped_module)\.")


def clean_name(name: str) -> str:
    """A parameter name without activation-checkpointing / compile wrapper parts."""
    return _WRAPPERS.sub("", name)


def lora_config(args: LoraArgs, base: str | None = None) -> LoraConfig:
    """The peft config for `args`; `base` is recorded as `base_model_name_or_path`."""
    from peft import LoraConfig

    return LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules=list(args.targets),
                      bias="none", base_model_name_or_path=base)


def add_lora(model: nn.Module, config: LoraConfig, seed: int = 0, autocast: bool = False) -> nn.Module:
    """Freezes `model` and injects LoRA layers in place (returns the same object).

    Args:
        model: a `Transformer`, plain or with bitsandbytes 4-bit linears (QLoRA: `qlora.quantize_`).
        config: the peft LoRA config.
        seed: seeds the adapters' initialization (A is random, B zero), independently of the global RNG stream.
        autocast: the model will train under bf16 autocast. Autocast runs the adapters' matmuls in bf16 anyway, so
            peft's cast of every adapter input up to the adapters' fp32 would only copy activations: turn it off.
    """
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    model.requires_grad_(False)
    if getattr(model, "quantized", False):
        model.is_loaded_in_4bit = True  # tells peft to wrap bitsandbytes Linear4bit layers with its 4-bit LoRA
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # fp32 master weights for the adapters
    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            m.cast_input_dtype_enabled = not autocast
    return model


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that train, by clean name."""
    return {clean_name(n): p for n, p in model.named_parameters() if p.requires_grad}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights in peft's on-disk naming, as full CPU tensors (collective under FSDP: every rank calls)."""
    from peft import get_peft_model_state_dict

    sd = {clean_name(k): v for k, v in model.state_dict().items() if "lora_" in k}
    sd = get_peft_model_state_dict(model, state_dict=sd, save_embedding_layers=False)
    out = {}
    for k, v in sd.items():
        v = v.full_tensor() if isinstance(v, DTensor) else v
        out[PEFT_PREFIX + k] = v.detach().to("cpu").contiguous()
    return out


def save_adapter(model: nn.Module, folder: str | Path, config: LoraConfig, extra: dict[str, torch.Tensor] | None = None,
                 files: dict[str, str] | None = None, tokenizer=None, write: bool = True) -> Path:
    """Writes the adapter folder atomically (a temporary folder renamed when complete).

    Args:
        extra: more tensors to store in the same file (e.g. a reward head), by their own names.
        files: more text files to write into the folder, name -> content.
        tokenizer: a tokenizer to save beside the adapter (so chat and merge find it there too).
        write: False on ranks other than 0 (they still take part in gathering sharded weights).
    """
    sd = adapter_state_dict(model)
    sd.update({k: v.detach().to("cpu").contiguous() for k, v in (extra or {}).items()})
    folder = Path(folder)
    if write:
        with atomic_dir(folder) as tmp:
            config.save_pretrained(str(tmp))
            save_file(sd, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
            for name, text in (files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
            if tokenizer is not None:
                tokenizer.save(tmp)
    return folder


def read_adapter(folder: str | Path) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """The config and the tensors of an adapter folder (tensors by their stored names).

    Raises:
        FileNotFoundError: the folder lacks adapter_config.json or adapter_model.safetensors.
    """
    from peft import LoraConfig

    folder = Path(folder)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not an adapter folder (no {name})")
    return LoraConfig.from_pretrained(str(folder)), load_file(folder / ADAPTER_WEIGHTS)


def load_adapter(model: nn.Module, folder: str | Path) -> dict[str, torch.Tensor]:
    """Injects the adapter stored in `folder` into `model` and loads its weights.

    Returns:
        The folder's tensors that are not LoRA weights (e.g. a reward head), by name.

    Raises:
        ValueError: the adapter does not fit the model (missing or mis-shaped weights).
    """
    from peft import set_peft_model_state_dict

    config, sd = read_adapter(folder)
    add_lora(model, config)
    lora = {k.removeprefix(PEFT_PREFIX): v for k, v in sd.items() if k.startswith(PEFT_PREFIX)}
    try:
        result = set_peft_model_state_dict(model, lora)
    except RuntimeError as e:  # size mismatch
        raise ValueError(f"adapter {folder} does not fit this model: {e}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ValueError(f"adapter {folder} does not fit this model: missing {missing[:3]}")
    return {k: v for k, v in sd.items() if not k.startswith(PEFT_PREFIX)}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Runs the base model: every LoRA layer passes its input through the frozen base layer only (DPO reference)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


def fold_lora_(model: nn.Module) -> int:
    """Folds every LoRA layer into its base weight in place (W += scale * B A, in fp32, rounded once to W's dtype)
    and puts the plain base layer back, one layer at a time. Returns the number of layers folded."""
    from peft.tuners.lora import LoraLayer

    if getattr(model, "quantized", False):
        raise ValueError("fold adapters into a 16-bit base, not a 4-bit one: load the base checkpoint unquantized")
    folded = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        with torch.no_grad():
            for adapter in module.active_adapters:
                a, b = module.lora_A[adapter].weight.float(), module.lora_B[adapter].weight.float()
                delta = (b @ a) * module.scaling[adapter]  # (out, in)
                base.weight.copy_((base.weight.float() + delta).to(base.weight.dtype))
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, base)
        folded += 1
    for attr in ("peft_config", "is_loaded_in_4bit"):
        if attr in model.__dict__:
            delattr(model, attr)
    return folded
