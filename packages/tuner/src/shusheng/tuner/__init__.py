"""shusheng.tuner: fine-tuning for InternLM2 / Llama-family models.

SFT (full, LoRA, QLoRA), DPO, a conditional reward model (InternLM2's COOL RLHF), LoRA merge/export to Hugging Face
folders, and a terminal chat. Data in Alpaca, OpenAI messages, ShareGPT, raw text or preference-pair form, rendered
through `shusheng.model.chat` templates and packed into rows with per-sample boundaries.

`Trainer`, `TunerConfig` and `load` are imported on first use, so that light commands (`list-templates`) start fast.
"""

import logging

# bitsandbytes (which peft imports) warns at import on CPUs with AVX512-BF16 when the optional `kernels` package is
# missing, then uses its own CPU kernels, which is what we want: the warning is noise on every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__all__ = ["Trainer", "TunerConfig", "load"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Trainer":
        from .trainer import Trainer

        return Trainer
    if name in ("TunerConfig", "load"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'shusheng.tuner' has no attribute {name!r}")
