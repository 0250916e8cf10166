"""The pretraining config: a dataclass tree loaded from YAML with `key=value` overrides (shusheng.model.training).

    model:  {preset: internlm2-1.8b}            # or checkpoint: path/to/hf-folder; overrides: {num_layers: 2}
    data:   {sources: [{path: shards/, weight: 1.0}], validation: val/, packing: documents}
    seq_len: 4096
    micro_batch: 1
    global_batch_tokens: 4194304                # gradient accumulation = this / (seq_len * micro_batch * dp ranks)
    tokens: 1.0e9                               # or steps: N
    stages: []                                  # multi-stage context extension, see Stage
    optim:  {lr: 3.0e-4, warmup_steps: 2000}
    activation_checkpointing: {mode: full, every: 1}
    parallel: {dp_shard: -1, tp: 1}

Defaults follow the InternLM2 recipe: AdamW (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices, warmup then
cosine decay to 10% of the peak LR, gradient clipping at 1.0, bf16 compute with fp32 master weights and reductions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shusheng.model.training import ConfigError


@dataclass
class ModelSection:
    preset: str | None = "tiny"  # a shusheng.model preset name
    checkpoint: str | None = None  # or a Hugging Face folder to continue from (wins over preset)
    overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {num_layers: 2}
    tokenizer: str | None = None  # tokenizer file/folder copied into exports (default: the checkpoint's)


@dataclass
class Source:
    path: str  # a shard prefix (`name` of name.bin/.idx), a folder of shards, or a glob of .idx files
    weight: float = 1.0

    def __post_init__(self):
        if self.weight <= 0:
            raise ConfigError(f"data source {self.path}: weight must be positive, got {self.weight}")


@dataclass
class DataSection:
    sources: list[Source] = field(default_factory=list)
    validation: str | None = None  # held-out shards (same path forms as a source)
    packing: str = "documents"  # documents: no attention or loss across documents; concat: plain GPT rows
    varlen_impl: str = "auto"  # attention kernel for packed documents (shusheng.model.attention.VARLEN_IMPLS)
    seed: int = 0  # document order: each epoch of each source is a seeded permutation

    def __post_init__(self):
        if self.packing not in ("documents", "concat"):
            raise ConfigError(f"data.packing must be 'documents' or 'concat', got {self.packing!r}")


@dataclass
class Stage:
    """One phase of multi-stage training (InternLM2: 4k tokens at RoPE base 50,000, then 32k at 1,000,000)."""

    seq_len: int
    tokens: float = 0  # token budget of this stage (or steps)
    steps: int = 0
    rope_theta: float | None = None  # None: keep the model's
    micro_batch: int | None = None  # None: the top-level micro_batch
    name: str = ""

    def __post_init__(self):
        if self.seq_len <= 0:
            raise ConfigError(f"stage {self.name or '?'}: seq_len must be positive")
        if (self.tokens > 0) == (self.steps > 0):
            raise ConfigError(f"stage {self.name or self.seq_len}: give exactly one of tokens or steps")


@dataclass
class OptimSection:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant, after warmup, down to min_lr_ratio x lr
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0: off


@dataclass
class ACSection:
    mode: str = "none"  # none | full
    every: int = 1  # checkpoint every k-th block

    def __post_init__(self):
        if self.mode not in ("none", "full"):
            raise ConfigError(f"activation_checkpointing.mode must be 'none' or 'full', got {self.mode!r}")
        if self.every < 1:
            raise ConfigError("activation_checkpointing.every must be >= 1")


@dataclass
class ParallelSection:
    dp_shard: int = -1  # FSDP shard group size; -1: all data-parallel ranks (ZeRO-3 over the job)
    tp: int = 1  # tensor-parallel degree (within a node)
    reshard_after_forward: bool = True  # False keeps gathered parameters until backward (ZeRO-2 style)


@dataclass
class CheckpointSection:
    interval: int = 0  # steps between checkpoints; 0: only at the end
    keep: int = 2
    folder: str | None = None  # default: OUTPUT/checkpoints
    resume: bool = True  # continue from the newest checkpoint in folder when there is one
    at_end: bool = True  # save when the run ends (benchmarks turn it off)


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    seq_len: int = 2048
    micro_batch: int = 1
    global_batch_tokens: int = 0  # 0: micro_batch x seq_len x data-parallel ranks (no accumulation)
    tokens: float = 0  # training budget for the single stage (or steps)
    steps: int = 0
    stages: list[Stage] = field(default_factory=list)  # when given, replaces seq_len/tokens/steps
    optim: OptimSection = field(default_factory=OptimSection)
    activation_checkpointing: ACSection = field(default_factory=ACSection)
    compile: bool = False  # torch.compile each block
    mixed_precision: str = "bf16"  # bf16: bf16 compute, fp32 master weights and reductions; fp32: all fp32
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval_interval: int = 0  # steps between validation passes; 0: only at the end (if data.validation is set)
    eval_batches: int = 4  # micro-batches per rank per validation pass
    output: str = "runs/evo"
    log_every: int = 1
    tensorboard: bool = False
    spike_factor: float = 3.0  # report a loss above this x the recent mean (0: off)
    device: str = "auto"  # auto | cuda | cpu
    seed: int = 0
    exit_after_steps: int = 0  # stop this invocation after k steps with a checkpoint (time-limited job slots)

    def __post_init__(self):
        if not self.stages:
            if (self.tokens > 0) == (self.steps > 0):
                raise ConfigError("give exactly one of tokens or steps (or a list of stages)")
            self.stages = [Stage(seq_len=self.seq_len, tokens=self.tokens, steps=self.steps, name="main")]
        if self.micro_batch < 1:
            raise ConfigError(f"micro_batch must be >= 1, got {self.micro_batch}")
        if self.mixed_precision not in ("bf16", "fp32"):
            raise ConfigError(f"mixed_precision must be 'bf16' or 'fp32', got {self.mixed_precision!r}")
        if not self.data.sources:
            raise ConfigError("data.sources is empty; give at least one shard path, e.g. data.sources=[{path: out/}]")
        if self.device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"device must be auto, cuda or cpu, got {self.device!r}")


@dataclass
class StagePlan:
    """A stage resolved against the data-parallel size: how many steps, and the accumulation per step."""

    index: int
    stage: Stage
    micro_batch: int
    grad_accum: int
    steps: int
    first_step: int  # global step at which the stage starts (0-based)

    @property
    def tokens_per_step(self) -> int:
        return self.stage.seq_len * self.micro_batch * self.grad_accum


def plan_stages(cfg: TrainConfig, dp: int) -> list[StagePlan]:
    """Resolve every stage: gradient accumulation from `global_batch_tokens`, steps from the token budget.

    Raises:
        ConfigError: global_batch_tokens is not a multiple of seq_len x micro_batch x dp.
    """
    plans, first = [], 0
    for i, st in enumerate(cfg.stages):
        mb = st.micro_batch or cfg.micro_batch
        per_micro = st.seq_len * mb * dp
        gbt = cfg.global_batch_tokens or per_micro
        if gbt % per_micro:
            raise ConfigError(
                f"global_batch_tokens ({gbt}) must be a multiple of seq_len x micro_batch x data-parallel ranks "
                f"({st.seq_len} x {mb} x {dp} = {per_micro}) in stage {st.name or i}"
            )
        steps = st.steps or max(int(st.tokens) // gbt, 1)
        plans.append(StagePlan(i, st, mb, gbt // per_micro, steps, first))
        first += steps
    return plans
