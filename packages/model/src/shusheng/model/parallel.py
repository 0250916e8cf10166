"""Parallelize a `Transformer` from outside, in a fixed order: TP -> activation checkpointing -> compile -> FSDP2.

The model code is single-device; these functions rewrite its modules in place (torchtitan's `parallelize.py`
shape). evo, tuner and deploy share them:

    model = build_model(cfg, device="meta") ...
    apply_tp(model, mesh["tp"])            # shard wqkv/w1/w3 by columns, wo/w2 by rows
    apply_ac(model, "full")                # recompute each block in backward
    apply_compile(model)                   # torch.compile each block
    apply_fsdp(model, mesh["dp"])          # FSDP2 fully_shard per block, then the root

Tensor parallelism shards the grouped `wqkv` over whole KV-head groups (contiguous rows), so each rank computes
complete query groups with their own k and v, and the attention layer infers its local head counts from shapes.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh

from .model import Transformer


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
    for name in ("num_kv_heads", "intermediate_size", "vocab_size"):
        if getattr(cfg, name) % tp:
            raise ValueError(f"tensor parallel degree {tp} must divide {name} ({getattr(cfg, name)})")
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

