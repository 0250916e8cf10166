"""Parallelize a `Transformer` from outside, in a fixed order: TP -> activation checkpointing -> compile -> FSDP2.

The model code is single-device; these functions rewrite its modules in place (torchtitan's `parallelize.py`
shape). evo, tuner and deploy share them:

    model = build_model(cfg, device="meta") ...
    apply_tp(model, mesh["tp"])            # shard wqkv/w1/w3 by columns, wo/w2 by rows
    apply_ac(model, "full")                # recompute each block in backward
    apply_compile(model)                   # torch.compile each block
    apply_fsdp(model, mesh["dp"])          # FSDP2 fully_shard per block, then the root

    shard_tp_local(model, rank, tp)        # serving: the same TP layout as plain local tensors

Tensor parallelism shards the grouped `wqkv` over whole KV-head groups (contiguous rows), so each rank computes
complete query groups with their own k and v, and the attention layer infers its local head counts from shapes.
`shard_tp_local` cuts the same layout into plain local tensors for serving (deploy's engine), where DTensor's
per-op dispatch costs too much in a decode step and the fused kernels want plain tensors; the caller then
all-reduces the outputs of `wo` and `w2` and all-gathers the vocabulary-sharded logits itself.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from .config import ModelConfig
from .model import Transformer


def check_tp(cfg: ModelConfig, tp: int) -> None:
    """Raises ValueError unless the TP degree `tp` divides num_kv_heads, intermediate_size and vocab_size."""
    if tp < 1:
        raise ValueError(f"tensor parallel degree must be >= 1, got {tp}")
    for name in ("num_kv_heads", "intermediate_size", "vocab_size"):
        if getattr(cfg, name) % tp:
            raise ValueError(f"tensor parallel degree {tp} must divide {name} ({getattr(cfg, name)})")


def apply_tp(model: Transformer, tp_mesh: DeviceMesh) -> Transformer:
    """Megatron-style tensor parallelism over `tp_mesh` (1-D).

    Embeddings are split by vocabulary rows, attention and MLP by heads / hidden units, the output projection by
    vocabulary with logits gathered (Replicate) so callers see the full (B, T, V) logits.

    Raises:
        ValueError: num_kv_heads, intermediate_size or vocab_size not divisible by the TP degree.
    """
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    cfg, tp = model.config, tp_mesh.size()
    check_tp(cfg, tp)
    if cfg.tie_word_embeddings:
        raise ValueError("tensor parallelism of tied embeddings is not supported; untie them or use FSDP only")
    parallelize_module(
        model,
        tp_mesh,
        {
            "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
            "output": ColwiseParallel(output_layouts=Replicate()),
        },
    )
    plan = {
        "attention.wqkv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w3": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(),
    }
    for block in model.layers:
        parallelize_module(block, tp_mesh, plan)
    return model


@torch.no_grad()
def shard_tp_local(model: Transformer, rank: int, tp: int) -> Transformer:
    """Keep rank `rank`'s tensor-parallel shard of every projection, in place, as plain local tensors (inference).

    The layout is `apply_tp`'s: `wqkv` (and its bias) by output rows over whole KV-head groups, `w1` and `w3` by
    output rows, `wo` and `w2` by input columns, the output head by vocabulary rows (a tied head gets its own
    shard; the embeddings stay whole). Norms stay replicated; `wo`'s bias stays on rank 0 only, so the sum over
    ranks adds it once. The model's forward then computes this rank's partial sums: the caller all-reduces the
    outputs of `wo` and `w2` and all-gathers the logits (vocabulary shards in rank order).

    Args:
        model: a plain (non-DTensor) `Transformer`; its full weights are released as they are cut.
        rank: this process's rank in the TP group, 0 .. tp - 1.
        tp: the TP degree.

    Raises:
        ValueError: a bad rank, or num_kv_heads, intermediate_size or vocab_size not divisible by `tp`.
    """
    check_tp(model.config, tp)
    if not 0 <= rank < tp:
        raise ValueError(f"rank {rank} is outside the tensor parallel group of size {tp}")

    def cut(linear: nn.Linear, dim: int) -> None:
        w = linear.weight
        n = w.shape[dim] // tp
        # clone: a view would keep the full tensor alive
        linear.weight = nn.Parameter(w.narrow(dim, rank * n, n).clone(), requires_grad=False)
        if dim == 0 and linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.narrow(0, rank * n, n).clone(), requires_grad=False)
        elif dim == 1 and linear.bias is not None and rank != 0:
            linear.bias = None
        linear.out_features, linear.in_features = linear.weight.shape

    for block in model.layers:
        attn, ffn = block.attention, block.feed_forward
        cut(attn.wqkv, 0)  # rows are KV groups of [q_1 .. q_g, k, v]: a contiguous cut keeps whole groups
        cut(attn.wo, 1)
        cut(ffn.w1, 0)
        cut(ffn.w3, 0)
        cut(ffn.w2, 1)
    if model.output.weight is model.tok_embeddings.weight:  # tied: the embeddings stay whole, the head is cut
        model.output.weight = nn.Parameter(model.output.weight.detach(), requires_grad=False)
    cut(model.output, 0)
    return model


def apply_ac(model: Transformer, mode: str = "full", every: int = 1) -> Transformer:
    """Activation checkpointing per block: activations are recomputed in backward instead of stored.

    Args:
        mode: "full" (every `every`-th block is checkpointed) or "none".
        every: checkpoint one block in `every` (1 = all; 2 = half of them, trading memory for speed).
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    if mode == "none":
        return model
    if mode != "full":
        raise ValueError(f"activation checkpointing mode {mode!r} is not one of 'full', 'none'")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    for i, block in enumerate(model.layers):
        if i % every == 0:
            model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)
    return model


def apply_compile(model: Transformer, **compile_kwargs) -> Transformer:
    """torch.compile each block in place (state-dict names unchanged); blocks share one compiled graph."""
    compile_kwargs.setdefault("fullgraph", True)
    for block in model.layers:
        block.compile(**compile_kwargs)
    return model


def apply_fsdp(
    model: Transformer,
    dp_mesh: DeviceMesh,
    param_dtype: torch.dtype | None = torch.bfloat16,
    reduce_dtype: torch.dtype | None = torch.float32,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
) -> Transformer:
    """FSDP2 (`fully_shard`) per block, then the root (embeddings, final norm, output).

    Args:
        dp_mesh: the data-parallel mesh (1-D; 2-D for HSDP).
        param_dtype: dtype parameters are all-gathered and computed in (None: keep the stored dtype).
        reduce_dtype: dtype gradients are reduce-scattered in.
        reshard_after_forward: free gathered parameters after forward (ZeRO-3) or keep them (ZeRO-2).
        cpu_offload: keep sharded parameters and optimizer state in host memory.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kw = dict(mesh=dp_mesh, mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype))
    if cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy()
    last = len(model.layers) - 1
    for i, block in enumerate(model.layers):
        # the last block's parameters are needed again right away in backward: don't reshard them
        fully_shard(block, reshard_after_forward=reshard_after_forward and i < last, **kw)
    fully_shard(model, reshard_after_forward=reshard_after_forward, **kw)
    return model


def exit_rank(code: int) -> NoReturn:
    """End this rank of a multi-process job at once, after its process group is destroyed: flush stdout and stderr,
    then leave without the interpreter's own teardown.

    At interpreter exit, torch's gloo backend sometimes aborts a rank whose work is done ("terminate called without
    an active exception" from a C++ thread, exit code -6), which turns a finished run into a failed one: 2 of 6 CI
    runs of the two-process tests on a 2-vCPU machine, 0 of 110 local runs. Skipping the teardown skips Python's
    atexit handlers too, so call this only when the rank's files are written and closed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
