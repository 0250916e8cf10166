"""The training loop every task (SFT, DPO, reward) and method (full, LoRA, QLoRA) shares: setup -> train -> finish.

Setup loads the tokenizer and data (packed rows), the base model (quantized for QLoRA, with LoRA adapters, inside a
reward model, sharded with FSDP2 over several processes), the objective, AdamW and the warmup + cosine schedule.
The loop takes `grad_accum` packed rows per process per optimizer step, divides each row's summed loss by the
count (trained tokens, or pairs) of the whole step across processes, clips, steps, logs JSONL metrics and a
progress line, evaluates on the held-out rows and writes checkpoints. The data order is a seeded permutation per
epoch, so step s always sees the same rows; with the model, optimizer, schedule and RNG restored from a checkpoint,
a resumed run continues bit for bit (LoRA checkpoints hold only what trains: the adapters, a reward head).

Outputs under `out/`: `config.yaml`, `data_report.json`, `metrics.jsonl`, `loss.png`, `checkpoints/step-N/`,
`summary.json`, and `adapter/` (LoRA, QLoRA; peft format) or `model/` (full; a Hugging Face folder); a LoRA run on
a preset's random weights also keeps them in `base/`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.distributed.tensor import DTensor

from shusheng.model import Transformer, save_pretrained
from shusheng.model.parallel import apply_ac, apply_compile
from shusheng.model.training import (
    CheckpointManager,
    LossGuard,
    MetricsLogger,
    Progress,
    build_optimizer,
    build_scheduler,
    flops_per_token,
    mfu,
    peak_flops,
    plot_loss_curve,
    read_jsonl,
    to_dict,
)

from . import distributed
from .config import TunerConfig
from .data import collate, prepare, resolve_template
from .io import save_tensors, write_json, write_text
from .lora import add_lora, clean_name, lora_config, save_adapter, trainable_parameters
from .methods import DPO, SFT, AdapterOffReference, ModelReference, Reward, RewardModel
from .methods.reward import REWARD_CONFIG_FILE, REWARD_HEAD_FILE
from .modeling import load_base, tokenizer_for
from .qlora import paged_optimizer, quantize_


class TrainableView(nn.Module):
    """The trainable parameters of a model under their clean names (dots become slashes): what a (Q)LoRA checkpoint
    holds. The frozen base is rebuilt from its own checkpoint on resume rather than saved at every step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for name, p in trainable_parameters(model).items():
            self.register_parameter(name.replace(".", "/"), p)


class Trainer:
    """A fine-tuning run.

    Args:
        cfg: the run's config.
        log: where human-readable lines go (default: stderr on the main process).
    """

    def __init__(self, cfg: TunerConfig, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        # full fine-tuning in bf16 keeps fp32 master weights through FSDP2's mixed precision, even on one device
        alone = cfg.method == "full" and cfg.train.precision == "bf16"
        self.dist = distributed.setup(cfg.train.device, fsdp_alone=alone)
        if not self.dist.main:
            self.log: Callable[[str], None] = lambda s: None
        else:
            self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.out = Path(cfg.out)
        t = cfg.train
        random.seed(t.seed)
        torch.manual_seed(t.seed)
        self.compute_dtype = torch.bfloat16 if t.precision == "bf16" else torch.float32
        self.tokenizer = tokenizer_for(cfg.model)
        self.template = resolve_template(cfg.data.template, self.tokenizer)
        self.data = prepare(cfg.data, cfg.task, self.tokenizer, self.template, t.seed, cfg.reward)
        self.backbone, self.policy = self._build_model()
        self.method = self._build_method()
        self.optimizer = self._build_optimizer()
        self.steps_per_epoch = math.ceil(len(self.data.train) / (t.grad_accum * self.dist.world))
        self.total_steps = min(t.max_steps or math.inf, t.epochs * self.steps_per_epoch)
        o = cfg.optim
        self.scheduler = build_scheduler(self.optimizer, o.warmup_steps, self.total_steps, o.schedule, o.min_lr_ratio)
        self.ckpt = CheckpointManager(self.out / "checkpoints", keep=t.keep)
        self.state_module = TrainableView(self.policy) if cfg.uses_lora else self.policy
        self._orders: dict[int, list[int]] = {}

    # ---- setup ---------------------------------------------------------------------------------------------------

    @property
    def base_path(self) -> Path:
        """The base checkpoint an adapter belongs to: `model.path`, or `out/base` where a preset's random weights are
        saved."""
        return Path(self.cfg.model.path) if self.cfg.model.path is not None else self.out / "base"

    def _build_model(self) -> tuple[Transformer, nn.Module]:
        cfg, t, dev = self.cfg, self.cfg.train, self.dist.device
        if cfg.method == "qlora" and self.dist.world > 1:
            raise ValueError("QLoRA runs in one process (bitsandbytes 4-bit weights do not shard with FSDP)")
        # LoRA keeps the frozen base in the compute dtype; full fine-tuning keeps fp32 master weights (and computes
        # in bf16 through FSDP2's mixed precision)
        store = torch.float32 if cfg.method == "full" or t.precision == "fp32" else torch.bfloat16
        backbone = load_base(cfg.model, self.tokenizer, store, "cpu" if cfg.method == "qlora" else dev)
        if cfg.model.preset is not None and cfg.uses_lora and self.dist.main:
            # random weights exist nowhere else: keep them, or the adapter could never be used again
            save_pretrained(backbone, self.base_path, format=backbone.config.model_type, tokenizer=self.tokenizer)
        if cfg.method == "qlora":
            quantize_(backbone, cfg.lora.targets, cfg.quant, self.compute_dtype, dev)
        policy: nn.Module = backbone
        if cfg.task == "reward":
            policy = RewardModel(backbone)
            backbone.output.requires_grad_(False)  # the reward model reads hidden states, not the LM head
        if cfg.uses_lora:
            add_lora(backbone, lora_config(cfg.lora, str(self.base_path)), seed=t.seed, autocast=t.precision == "bf16")
            if cfg.task == "reward":
                policy.score.requires_grad_(True)
        if t.activation_checkpointing:
            apply_ac(backbone, "full")
        if t.compile:
            apply_compile(backbone)
        if self.dist.mesh is not None:
            param_dtype = self.compute_dtype if t.precision == "bf16" else None
            distributed.shard(policy, backbone, self.dist.mesh, param_dtype, head_apart=cfg.task == "dpo")
        return backbone, policy.train()

    def _build_method(self):
        cfg = self.cfg
        if cfg.task == "sft":
            return SFT()
        if cfg.task == "reward":
            return Reward(cfg.reward.gamma, cfg.reward.penalty, cfg.reward.bound)
        if cfg.dpo.reference is None and cfg.uses_lora:
            return DPO(cfg.dpo.beta, AdapterOffReference(self.backbone))
        ref_args = cfg.model if cfg.dpo.reference is None else type(cfg.model)(path=cfg.dpo.reference)
        dtype = torch.float32 if cfg.train.precision == "fp32" else torch.bfloat16
        ref = load_base(ref_args, self.tokenizer, dtype, self.dist.device)
        if self.dist.mesh is not None:
            distributed.shard(ref, ref, self.dist.mesh, None, head_apart=True)
        return DPO(cfg.dpo.beta, ModelReference(ref))

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        opt = build_optimizer(self.policy, o.lr, o.weight_decay, tuple(o.betas), o.eps)
        if o.name == "adamw":
            return opt
        # decay on matrices only, as build_optimizer groups them; bitsandbytes' paged AdamW takes the same groups
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
        return paged_optimizer(o.name, groups, o.lr, tuple(o.betas), o.eps)

    # ---- data order ------------------------------------------------------------------------------------------------

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(len(self.data.train), generator=g).tolist()}
        return self._orders[epoch]

    def step_rows(self, step: int) -> list[int]:
        """Indices of the packed rows optimizer step `step` trains on (all processes together)."""
        per = self.cfg.train.grad_accum * self.dist.world
        epoch, k = divmod(step, self.steps_per_epoch)
        return self._order(epoch)[k * per : (k + 1) * per]

    def _mine(self, rows: list[int]) -> list[tuple[int, float]]:
        # Every process runs the same number of micro-batches (FSDP collectives); one short of rows repeats the
        # first row with weight 0, which adds nothing to the gradient.
        n = math.ceil(len(rows) / self.dist.world)
        mine = rows[self.dist.rank :: self.dist.world]
        return [(r, 1.0) for r in mine] + [(rows[0], 0.0)] * (n - len(mine))

    def _count(self, row) -> int:
        return sum(d.num_trained for u in row for d in u) if self.method.unit == "token" else len(row)

    # ---- loop ----------------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.cfg.train.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)

    def _run(self, row) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        batch = collate(row).to(self.dist.device)
        with self._autocast():
            loss, metrics = self.method.loss(self.policy, batch, batch.attention(self.compute_dtype))
        return loss, metrics, batch.input_ids.numel()

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step (every process calls it); returns the step's metrics."""
        rows = self.step_rows(step)
        total = sum(self._count(self.data.train[r]) for r in rows)
        scale = self.dist.world / max(total, 1)  # FSDP averages gradients over processes: undo that
        micro = self._mine(rows)
        loss_sum = torch.zeros((), device=self.dist.device)
        sums: dict[str, torch.Tensor] = {}
        tokens = 0
        for i, (r, w) in enumerate(micro):
            if self.dist.mesh is not None:
                self.policy.set_requires_gradient_sync(i == len(micro) - 1)
            loss, metrics, n = self._run(self.data.train[r])
            (loss * (scale * w)).backward()
            loss_sum += loss.detach() * w
            tokens += int(n * w)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v.detach() * w
        params = [p for p in self.policy.parameters() if p.requires_grad]
        max_norm = self.cfg.optim.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        keys = sorted(sums)
        packed = self.dist.sum(torch.stack([loss_sum, torch.tensor(float(tokens), device=loss_sum.device),
                                            *[sums[k].float() for k in keys]]))
        record = {"loss": float(packed[0]) / total, "lr": lr, "grad_norm": float(norm), "tokens": int(packed[1])}
        record.update({k: float(v) / total for k, v in zip(keys, packed[2:], strict=True)})
        return record

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss (per trained token, or per pair) and metrics on the held-out rows, as `val_*`."""
        rows = self.data.eval
        if not rows:
            return {}
        self.policy.eval()
        loss_sum = torch.zeros((), device=self.dist.device)
        count = 0.0
        sums: dict[str, torch.Tensor] = {}
        for r, w in self._mine(list(range(len(rows)))):
            loss, metrics, _ = self._run(rows[r])
            loss_sum += loss * w
            count += self._count(rows[r]) * w
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v * w
        self.policy.train()
        keys = sorted(sums)
        packed = self.dist.sum(torch.stack([loss_sum, torch.tensor(count, device=loss_sum.device),
                                            *[sums[k].float() for k in keys]]))
        n = float(packed[1])
        return {"val_loss": float(packed[0]) / n, **{f"val_{k}": float(v) / n for k, v in zip(keys, packed[2:],
                                                                                               strict=True)}}

    def resume(self) -> int:
        """Loads the checkpoint `train.resume` asks for; returns the step to continue from (0: fresh start)."""
        r = self.cfg.train.resume
        path = None if r == "never" else self.ckpt.latest() if r == "auto" else Path(r)
        if path is None:
            return 0
        extra = self.ckpt.load(path, self.state_module, self.optimizer, self.scheduler)
        if extra["state"].get("total_steps") != self.total_steps:
            self.log(f"warning: {path} was written by a run of {extra['state'].get('total_steps')} steps, this one "
                     f"has {self.total_steps}; the schedule continues from step {extra['step']}")
        self.log(f"resumed from {path} at step {extra['step']}")
        return extra["step"]

    def train(self, stop_at: int | None = None) -> dict[str, float]:
        """Runs (or resumes) training to the end and writes the outputs.

        Args:
            stop_at: stop after this step, as an interruption would (a checkpoint is written there), without the
                final outputs; a later `train()` resumes from it.

        Returns:
            The last step's metrics (with the final evaluation).
        """
        t, main = self.cfg.train, self.dist.main
        start = self.resume()
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text(self.out / "config.yaml", yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
            report = {"formats": self.data.formats, "train": self.data.train_report.to_dict(),
                      "eval": self.data.eval_report.to_dict() if self.data.eval_report else None}
            write_json(self.out / "data_report.json", report)
        self._log_setup(start)
        metrics = MetricsLogger(self.out / "metrics.jsonl", resume_step=start, enabled=main)
        progress = Progress(self.total_steps, start, enabled=main)
        guard, flops, peak = LossGuard(), self._flops_per_token(), peak_flops(self.dist.device)[1]
        record: dict[str, float] = {}
        if start >= self.total_steps:  # resumed a finished run: only the outputs are (re)written
            self.log(f"the run is complete ({start} of {self.total_steps} steps)")
            record = {"step": start, **self.evaluate()}
        for step in range(start, self.total_steps):
            t0 = time.perf_counter()
            record = self.train_step(step)
            dt = time.perf_counter() - t0
            n = step + 1
            record.update(step=n, epoch=step // self.steps_per_epoch, tokens_per_s=record["tokens"] / dt)
            util = mfu(record["tokens_per_s"] / self.dist.world, flops, peak)
            if util is not None:
                record["mfu"] = util
            warning = guard.check(record["loss"], n)
            if warning:
                self.log(warning)
            last = n == self.total_steps
            if (t.eval_every and n % t.eval_every == 0) or last:
                record.update(self.evaluate())
            if n % t.log_every == 0 or last or "val_loss" in record:
                metrics.log(record)
            progress.update(n, loss=record["loss"], lr=record["lr"])
            if (t.save_every and n % t.save_every == 0) or last or (stop_at is not None and n >= stop_at):
                self.ckpt.save(n, self.state_module, self.optimizer, self.scheduler,
                               state={"total_steps": self.total_steps})
            if stop_at is not None and n >= stop_at and not last:
                progress.close()
                metrics.close()
                return record
        progress.close()
        metrics.close()
        self.finish(record)
        return record

    # ---- outputs -------------------------------------------------------------------------------------------------

    def finish(self, record: dict[str, float]) -> Path:
        """Writes the adapter (LoRA, QLoRA) or the Hugging Face model folder (full), the loss curve and a summary."""
        main = self.dist.main
        head, files = None, {}
        if isinstance(self.policy, RewardModel):
            head = {k: v.full_tensor() if isinstance(v, DTensor) else v
                    for k, v in self.policy.head_state_dict().items()}
            r = self.cfg.reward
            files[REWARD_CONFIG_FILE] = json.dumps({"domains": r.domains, "default_domain": r.default_domain,
                                                    "template": self.template}, indent=2, ensure_ascii=False)
        if self.cfg.uses_lora:
            config = lora_config(self.cfg.lora, str(self.base_path))
            path = save_adapter(self.backbone, self.out / "adapter", config, extra=head, files=files,
                                tokenizer=self.tokenizer, write=main)
        else:
            path = self._save_full(head, files)
        if main:
            if (self.out / "metrics.jsonl").is_file():
                tmp = self.out / ".loss.tmp.png"
                if plot_loss_curve(read_jsonl(self.out / "metrics.jsonl"), tmp,
                                   title=f"{self.cfg.task} ({self.cfg.method})") is not None:
                    tmp.replace(self.out / "loss.png")
            write_json(self.out / "summary.json", {"output": str(path), "steps": self.total_steps, **record})
            self.log(f"wrote {path}")
        self.dist.barrier()
        return path

    def _save_full(self, head: dict | None, files: dict[str, str]) -> Path:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        path = self.out / "model"
        model = self.backbone
        if self.dist.mesh is not None:  # gather the shards into a full CPU copy on rank 0 (collective)
            sd = get_model_state_dict(self.backbone, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.dist.main:
                with torch.device("meta"):
                    model = Transformer(self.backbone.config)
                model.load_state_dict({clean_name(k): v for k, v in sd.items()}, assign=True)
                model.tie_weights()
        if self.dist.main:
            fmt = self.cfg.train.save_format or self.backbone.config.model_type
            dtype = torch.bfloat16 if self.cfg.train.precision == "bf16" else None
            save_pretrained(model, path, format=fmt, tokenizer=self.tokenizer, dtype=dtype)
            if head is not None:
                save_tensors(path / REWARD_HEAD_FILE, head)
            for name, text in files.items():
                write_text(path / name, text)
        return path

    # ---- reporting -----------------------------------------------------------------------------------------------

    def _flops_per_token(self) -> float:
        r = self.data.train_report
        docs = sum(len(u) for row in self.data.train for u in row)
        return flops_per_token(self.backbone.config, max(1, r.tokens // max(docs, 1)))

    def _log_setup(self, start: int) -> None:
        trainable = sum(p.numel() for p in self.policy.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.policy.parameters())
        self.log(self.data.summary())
        self.log(f"{self.cfg.task} / {self.cfg.method} on {self.dist.device} x{self.dist.world}, template "
                 f"{self.template}: {trainable:,} trainable of {total:,} parameters; {self.total_steps} steps "
                 f"({self.steps_per_epoch} per epoch){f', from step {start}' if start else ''}")
