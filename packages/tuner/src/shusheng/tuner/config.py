"""The fine-tuning config: one dataclass tree, read from YAML with `key=value` overrides.

    cfg = load(path, ["optim.lr=1e-4", "lora.rank=8"])

Loading, overrides and type checks are `shusheng.model.training.load_config`, the mechanism every Shusheng CLI
shares; this file only declares the fields, their defaults and the checks between them. Relative paths are taken
from the current directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shusheng.model.training import ConfigError, load_config

__all__ = ["ConfigError", "TunerConfig", "load"]

DEFAULT_TARGETS = ["wqkv", "wo", "w1", "w2", "w3"]


@dataclass
class Source:
    """One data source: a local .json / .jsonl / .parquet file, or `hf:owner/name` on the Hugging Face hub."""

    path: str
    split: str = "train"  # hub datasets only
    subset: str | None = None  # hub config name
    limit: int | None = None  # keep the first `limit` records


@dataclass
class ModelArgs:
    path: str | None = None  # a Hugging Face checkpoint folder (InternLM2 or Llama-family naming)
    preset: str | None = None  # or a `shusheng.model` preset with random weights (tests, benchmarks)
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields changed on the preset
    tokenizer: str | None = None  # default: the checkpoint folder
    seed: int = 0  # initialization seed of a preset

    def __post_init__(self):
        if (self.path is None) == (self.preset is None):
            raise ValueError("set exactly one of model.path (a checkpoint folder) and model.preset (random weights)")
        if self.preset is not None and self.tokenizer is None:
            raise ValueError("model.preset needs model.tokenizer (a tokenizer file or folder)")
        if self.overrides and self.preset is None:
            raise ValueError("model.overrides only apply to model.preset")


@dataclass
class DataArgs:
    train: list[str | Source] = field(default_factory=list)
    eval: list[str | Source] = field(default_factory=list)  # held-out data; or carve it out with eval_fraction
    eval_fraction: float = 0.0  # share of the training records held out for evaluation when `eval` is empty
    template: str | None = None  # chat template; default the tokenizer's, else internlm2
    train_on: Literal["assistant", "all"] = "assistant"  # loss on assistant tokens only, or on every token
    max_length: int = 2048  # tokens per packed row
    overflow: Literal["truncate", "drop", "error"] = "truncate"  # what happens to a sample longer than a row
    system: str | None = None  # system prompt for conversations that have none

    def __post_init__(self):
        self.train = [_source(s) for s in self.train]
        self.eval = [_source(s) for s in self.eval]
        if not self.train:
            raise ValueError("data.train is empty: give one or more files or hf:owner/name datasets")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_length < 8:
            raise ValueError(f"data.max_length must be >= 8, got {self.max_length}")


@dataclass
class LoraArgs:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))  # module names inside each block

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        unknown = sorted(set(self.targets) - set(DEFAULT_TARGETS))
        if unknown or not self.targets:
            raise ValueError(f"lora.targets {unknown or '[]'} must be a non-empty subset of {DEFAULT_TARGETS}")


@dataclass
class QuantArgs:
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True  # quantize the quantization constants too (QLoRA's double quantization)


@dataclass
class OptimArgs:
    name: Literal["adamw", "paged_adamw", "paged_adamw_8bit"] = "adamw"  # paged ones: bitsandbytes, CUDA only
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0  # 0: no clipping


@dataclass
class TrainArgs:
    epochs: int = 1
    max_steps: int | None = None  # stop earlier than `epochs`
    grad_accum: int = 1  # packed rows per optimizer step per process
    precision: Literal["bf16", "fp32"] = "bf16"
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile each block (not yet with packed rows: see __post_init__)
    device: str = "auto"  # auto: cuda when available, else cpu
    seed: int = 0  # LoRA init, data order, held-out split
    log_every: int = 1
    eval_every: int = 0  # 0: evaluate at the end only
    save_every: int = 0  # 0: checkpoint at the end only
    keep: int = 2  # checkpoints kept
    resume: str = "auto"  # auto (the latest checkpoint in out/checkpoints, if any), never, or a checkpoint folder
    save_format: Literal["llama", "internlm2"] | None = None  # full fine-tuning output; default the base's format

    def __post_init__(self):
        for name in ("epochs", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1, got {self.max_steps}")
        if self.compile:
            # Packed rows differ in length and document count; compiled blocks recompile per shape until dynamo's
            # limit stops the run (seen on an H100). Until rows are padded to a fixed length, refuse it up front.
            raise ValueError("train.compile is not supported yet: packed rows of varying length make compiled "
                             "blocks recompile every step; leave train.compile=false (eager already runs 1.9x "
                             "HF + peft on LoRA)")


@dataclass
class DPOArgs:
    beta: float = 0.1  # strength of the implicit KL penalty
    reference: str | None = None  # a checkpoint folder; default the base model (adapters off, or a frozen copy)


@dataclass
class RewardArgs:
    domains: dict[str, str] = field(default_factory=dict)  # domain -> condition system prompt (COOL RLHF)
    default_domain: str | None = None  # domain of records without a `domain` field
    gamma: float = 2.0  # focal-style difficulty decay of the ranking loss (0: plain ranking loss)
    penalty: float = 0.02  # weight of the log-barrier penalty that keeps scores inside (-bound, bound)
    bound: float = 5.0

    def __post_init__(self):
        if self.default_domain is not None and self.default_domain not in self.domains:
            raise ValueError(f"reward.default_domain {self.default_domain!r} is not one of reward.domains "
                             f"{sorted(self.domains)}")
        if self.bound <= 0:
            raise ValueError(f"reward.bound must be positive, got {self.bound}")


@dataclass
class TunerConfig:
    task: Literal["sft", "dpo", "reward"] = "sft"
    method: Literal["full", "lora", "qlora"] = "lora"
    out: str = "runs/tuner"
    model: ModelArgs | None = None  # required
    data: DataArgs | None = None  # required
    lora: LoraArgs = field(default_factory=LoraArgs)
    quant: QuantArgs = field(default_factory=QuantArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    dpo: DPOArgs = field(default_factory=DPOArgs)
    reward: RewardArgs = field(default_factory=RewardArgs)

    def __post_init__(self):
        if self.model is None:
            raise ValueError("model is missing: set model.path (a checkpoint folder) or model.preset + model.tokenizer")
        if self.data is None:
            raise ValueError("data is missing: set data.train (files or hf:owner/name datasets)")
        if self.optim.name != "adamw" and self.method == "full":
            raise ValueError(f"optim.name={self.optim.name} is meant for (Q)LoRA; use adamw for full fine-tuning")

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def uses_lora(self) -> bool:
        return self.method in ("lora", "qlora")


def load(path: str | Path | None, overrides: list[str] | None = None) -> TunerConfig:
    """Reads a YAML config and applies `key=value` overrides.

    Raises:
        ConfigError: an unknown key, a wrong type, or a failed check; the message names the key.
    """
    return load_config(TunerConfig, path, overrides)


def _source(s: str | Source) -> Source:
    return Source(path=s) if isinstance(s, str) else s
