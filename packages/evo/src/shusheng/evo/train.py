"""The pretraining loop: stages -> steps -> micro-batches, with checkpoints, validation, metrics and guards.

    env = setup(cfg); model = build(cfg, env)          # TP -> AC -> compile -> FSDP2
    for stage in stages:                               # e.g. 4k tokens at RoPE base 50k, then 32k at 1M
        for step in stage:
            for micro-batch in grad_accum:             # rows packed from the weighted sources, this rank's share
                loss_sum(model(ids, attention=varlen(cu_seqlens), labels)) / global targets -> backward
            clip, AdamW step, LR schedule; log; validate; checkpoint

The loss of a step is the mean over every target token of the global batch (all ranks, all micro-batches), so one
process with accumulation and N processes give the same updates.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.distributed.tensor import DTensor

from shusheng.model.attention import available_varlen_impls, cu_seqlens_from_lengths, varlen_attention
from shusheng.model.fileio import write_json, write_text
from shusheng.model.training import (
    CheckpointManager,
    ConfigError,
    LossGuard,
    MetricsLogger,
    Progress,
    build_optimizer,
    build_scheduler,
    flops_per_token,
    mfu,
    oom_message,
    peak_flops,
    plot_loss_curve,
    read_jsonl,
    to_dict,
)

from .config import StagePlan, TrainConfig, plan_stages
from .data import Batch, PackedStream, build_batch
from .distributed import Env, all_reduce_sum, build, setup
from .shards import TokenSource


@dataclass
class RunResult:
    step: int
    loss: float
    val_loss: float | None
    tokens: int
    output: Path


def _micro_batches(stream: PackedStream, plan: StagePlan, env: Env, packing: str, step_rows: int) -> list[Batch]:
    """This rank's micro-batches of one step. Every rank walks the whole global batch's plans (lengths only) and
    reads tokens for its own rows: global row index = start + (m * dp + dp_rank) * micro_batch + b."""
    mb, dp = plan.micro_batch, env.dp
    rows = (step_rows, step_rows + plan.grad_accum * mb * dp)
    batches = []
    for _ in range(plan.grad_accum):
        plans = [[stream.next_plan() for _ in range(mb)] for _ in range(dp)]
        batches.append(build_batch(stream, plans[env.dp_rank], packing, rows))
    return batches


def attention_for(batch: Batch, cfg: TrainConfig, device: torch.device):
    """The attention backend of a batch: varlen over its document pieces, or None (dense causal rows)."""
    if batch.doc_lengths is None:
        return None
    cu = cu_seqlens_from_lengths(batch.doc_lengths)  # on the CPU: checked there, copied without a sync
    dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32
    # max_seqlen = the row length (an upper bound of every piece): a constant, so compiled blocks never recompile
    return varlen_attention(cu, batch.input_ids.shape[1], impl=cfg.data.varlen_impl, dtype=dtype, device=device)


def _check_compile(cfg: TrainConfig, env: Env) -> None:
    """Compiled blocks need a varlen kernel that compiles (torch_varlen, flex); the CPU fallback loops in Python."""
    if not (cfg.compile and cfg.data.packing == "documents"):
        return
    dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32
    impl = cfg.data.varlen_impl if cfg.data.varlen_impl != "auto" else available_varlen_impls(env.device, dtype)[0]
    if impl == "sdpa_loop":
        raise ConfigError(f"compile=true with data.packing=documents needs a compilable varlen attention kernel "
                          f"(torch_varlen or flex, on CUDA); on {env.device.type} set compile=false or "
                          "data.packing=concat")


def _forward_loss(model, batch: Batch, cfg: TrainConfig, env: Env) -> torch.Tensor:
    pin = env.device.type == "cuda"
    ids, labels = (t.pin_memory().to(env.device, non_blocking=True) if pin else t
                   for t in (batch.input_ids, batch.labels))
    attention = attention_for(batch, cfg, env.device)
    autocast = (torch.autocast("cpu", torch.bfloat16) if not env.distributed and cfg.mixed_precision == "bf16"
                and env.device.type == "cpu" else contextlib.nullcontext())
    with autocast:
        return model(ids, attention=attention, labels=labels)


def _grad_norm(model, max_norm: float) -> float:
    """Global gradient norm (and clipping to `max_norm` when > 0). With FSDP + TP the gradients live on two meshes
    (TP-sharded matrices on dp x tp, norms and the rest on dp alone), which one norm call cannot mix: the norm is
    taken per mesh, made whole, and combined."""
    groups: dict = {}
    for p in model.parameters():
        if p.grad is not None:
            groups.setdefault(getattr(p.grad, "device_mesh", None), []).append(p)
    norms = []
    for params in groups.values():
        n = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0, foreach=True)
        norms.append(n.full_tensor() if isinstance(n, DTensor) else n)
    total = norms[0] if len(norms) == 1 else torch.stack([n.float() for n in norms]).norm()
    if max_norm > 0:
        for params in groups.values():  # one mesh per foreach call
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=True)
    return float(total)


@torch.no_grad()
def evaluate(model, cfg: TrainConfig, env: Env, val: TokenSource | None, seq_len: int,
             micro_batch: int) -> float | None:
    """Mean loss over the first `eval_batches` micro-batches per rank of the validation shards (the same rows every
    time: a fresh stream over the already-opened `val` source)."""
    if val is None:
        return None
    stream = PackedStream([val], [1.0], seq_len, cfg.data.seed)
    model.eval()
    loss_sum = targets = 0.0
    for i in range(cfg.eval_batches):
        plans = [[stream.next_plan() for _ in range(micro_batch)] for _ in range(env.dp)]
        batch = build_batch(stream, plans[env.dp_rank], cfg.data.packing, (i, i))
        loss_sum += float(_forward_loss(model, batch, cfg, env))
        targets += batch.num_targets
    model.train()
    loss_sum, targets = all_reduce_sum([loss_sum, targets], env)
    return loss_sum / max(targets, 1)


def train(cfg: TrainConfig, log_stream=None) -> RunResult:
    """Run (or resume) the training described by `cfg`. Collective: every rank calls it."""
    env = setup(cfg)
    _check_compile(cfg, env)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output)
    plans = plan_stages(cfg, env.dp)
    total_steps = sum(p.steps for p in plans)
    model = build(cfg, env)
    opt = build_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.eps)
    sched = build_scheduler(opt, cfg.optim.warmup_steps, total_steps, cfg.optim.schedule, cfg.optim.min_lr_ratio)
    stream = PackedStream([TokenSource(s.path) for s in cfg.data.sources], [s.weight for s in cfg.data.sources],
                          plans[0].stage.seq_len, cfg.data.seed)
    val = TokenSource(cfg.data.validation) if cfg.data.validation else None  # opened once, read at every evaluation
    ckpt = CheckpointManager(cfg.checkpoint.folder or out / "checkpoints", cfg.checkpoint.keep)

    step, tokens_seen, rows_seen = 0, 0, 0
    latest = ckpt.latest() if cfg.checkpoint.resume else None
    if latest is not None:
        state = ckpt.load(latest, model, opt, sched)["state"]
        step, tokens_seen, rows_seen = state["step"], state["tokens"], state["rows"]
        stream.load_state_dict(state["data"])
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    device_name, peak = peak_flops(env.device)
    logger = MetricsLogger(out / "metrics.jsonl", resume_step=step if latest else None,
                           tensorboard_dir=out / "tensorboard" if cfg.tensorboard else None, enabled=env.is_main)
    if latest is None:
        logger.log({"event": "start", "device": device_name, "peak_flops": peak, "world_size": env.world,
                    "params": model.config.num_params, "total_steps": total_steps})
    progress = Progress(total_steps, start=step, enabled=env.is_main, stream=log_stream)
    guard = LossGuard(cfg.spike_factor)
    loss = val_loss = None

    def save(at: int) -> None:
        data = {"step": at, "tokens": tokens_seen, "rows": rows_seen, "data": stream.state_dict(),
                "model_config": model.config.to_dict(), "config": to_dict(cfg)}
        ckpt.save(at, model, opt, sched, state=data)

    stop_at = step + cfg.exit_after_steps if cfg.exit_after_steps else total_steps
    for plan in plans:
        end = min(plan.first_step + plan.steps, stop_at)
        if step >= end:
            continue
        stream.set_seq_len(plan.stage.seq_len)
        thetas = [p.stage.rope_theta for p in plans[: plan.index + 1] if p.stage.rope_theta is not None]
        if thetas:  # the newest base up to this stage (also when resuming inside a later stage)
            model.config.rope_theta = thetas[-1]
        fpt = flops_per_token(model.config, plan.stage.seq_len)
        while step < end:
            t0 = time.perf_counter()
            try:
                batches = _micro_batches(stream, plan, env, cfg.data.packing, rows_seen)
                step_targets = all_reduce_sum([float(sum(b.num_targets for b in batches))], env)[0]
                scale = env.dp / max(step_targets, 1.0)  # FSDP averages gradients over dp ranks
                loss_acc = torch.zeros((), dtype=torch.float64, device=env.device)  # summed on device: no sync
                for m, batch in enumerate(batches):
                    if env.distributed:
                        model.set_requires_gradient_sync(m == len(batches) - 1)
                    micro_loss = _forward_loss(model, batch, cfg, env)
                    (micro_loss * scale).backward()
                    loss_acc += micro_loss.detach()
                loss_sum = float(loss_acc)
                grad_norm = _grad_norm(model, cfg.optim.grad_clip)
                lr = sched.get_last_lr()[0]
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            except torch.OutOfMemoryError:
                raise SystemExit(oom_message({"micro_batch": plan.micro_batch, "seq_len": plan.stage.seq_len,
                                              "activation_checkpointing.mode": cfg.activation_checkpointing.mode,
                                              "parallel.dp_shard": cfg.parallel.dp_shard})) from None
            loss = all_reduce_sum([loss_sum], env)[0] / max(step_targets, 1.0)
            step += 1
            step_tokens = plan.tokens_per_step * env.dp
            tokens_seen += step_tokens
            rows_seen += plan.grad_accum * plan.micro_batch * env.dp
            warning = guard.check(loss, step, f"stage {plan.index}, global rows {batches[0].rows[0]}-"
                                              f"{batches[0].rows[1] - 1}")
            if env.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            tps_gpu = step_tokens / dt / env.world
            record = {"step": step, "stage": plan.index, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens": tokens_seen, "tokens_per_s": step_tokens / dt, "tokens_per_s_per_gpu": tps_gpu,
                      "mfu": mfu(tps_gpu, fpt, peak), "step_time": dt}
            if env.device.type == "cuda":
                record["peak_mem_gb"] = torch.cuda.max_memory_allocated(env.device) / 2**30
            if warning:
                record["warning"] = warning
                if env.is_main:
                    print(f"warning: {warning}", file=log_stream or sys.stderr, flush=True)
            if cfg.eval_interval and step % cfg.eval_interval == 0:
                val_loss = record["val_loss"] = evaluate(model, cfg, env, val, plan.stage.seq_len, plan.micro_batch)
            if step % cfg.log_every == 0 or step == total_steps or warning or "val_loss" in record:
                logger.log(record)
            progress.update(step, loss=loss, lr=lr, **({"mfu": f"{record['mfu']:.1%}"} if record["mfu"] else {}))
            if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0 and step < total_steps:
                save(step)
    progress.close()
    if loss is not None or latest is not None:
        if step == total_steps and not (cfg.eval_interval and step % cfg.eval_interval == 0) and cfg.data.validation:
            last = plans[-1]
            val_loss = evaluate(model, cfg, env, val, last.stage.seq_len, last.micro_batch)
            logger.log({"step": step, "val_loss": val_loss})
        if cfg.checkpoint.at_end and (ckpt.latest() is None or ckpt.latest().name != f"step-{step:08d}"):
            save(step)
    if env.is_main:
        records = read_jsonl(out / "metrics.jsonl")
        plot_loss_curve(records, out / "loss.png", title=f"{cfg.model.preset or cfg.model.checkpoint}")
        summary = {"step": step, "loss": loss, "val_loss": val_loss, "tokens": tokens_seen, "device": device_name,
                   "checkpoint": str(ckpt.latest())}
        write_json(out / "summary.json", summary)
    logger.close()
    if env.distributed:
        dist.barrier()
    return RunResult(step, loss if loss is not None else float("nan"), val_loss, tokens_seen, out)
