"""Before launching: parameters, FLOPs per token and memory per GPU for the chosen parallel dims (an estimate).

Memory per GPU = sharded states (fp32 weights 4 B + fp32 gradients 4 B + AdamW moments 8 B per parameter, divided
over the FSDP shard group x TP) + the gathered bf16 weights of the blocks in flight + activations of one micro-batch
(bf16 tensors saved for backward, per token per layer; with full activation checkpointing only each block's input
plus one block's internals) + the fused loss head's chunk.
"""

from __future__ import annotations

from shusheng.model import ModelConfig
from shusheng.model.training import flops_per_token

from .config import TrainConfig
from .distributed import model_config

GIB = 2**30


def _activation_bytes_per_token_layer(c: ModelConfig, tp: int) -> float:
    D, F, Dh = c.hidden_size, c.intermediate_size, c.head_dim
    qkv = (c.num_heads + 2 * c.num_kv_heads) * Dh
    # bf16: block input, attention norm out, qkv, rotary q/k, attention out (+ fp32 logsumexp), ffn norm out,
    # w1 and w3 outputs, silu(w1) * w3
    saved = 2 * (D + D + qkv + qkv + c.num_heads * Dh + D) + 4 * c.num_heads + 2 * (3 * F)
    return saved / tp


def estimate(cfg: TrainConfig, world: int) -> dict:
    c = model_config(cfg)
    tp = cfg.parallel.tp
    dp = max(world // tp, 1)
    shard = (dp if cfg.parallel.dp_shard == -1 else cfg.parallel.dp_shard) * tp
    n = c.num_params
    block = (n - c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)) / c.num_layers
    states = n * 16 / shard
    gathered = 2 * block * 2 / tp  # bf16 weights of the current and the prefetched block
    stages = []
    for st in cfg.stages:
        mb = st.micro_batch or cfg.micro_batch
        tokens = mb * st.seq_len
        per_layer = _activation_bytes_per_token_layer(c, tp) * tokens
        if cfg.activation_checkpointing.mode == "full":
            k = cfg.activation_checkpointing.every
            kept = c.num_layers - (c.num_layers + k - 1) // k  # blocks not checkpointed keep everything
            act = tokens * 2 * c.hidden_size * c.num_layers / tp + per_layer * (kept + 1)
        else:
            act = per_layer * c.num_layers
        head = min(tokens, 4096) * c.vocab_size * 4 * 2 + c.vocab_size * c.hidden_size * 4  # chunk + fp32 dW
        total = states + gathered + act + head
        stages.append({"stage": st.name or f"seq {st.seq_len}", "seq_len": st.seq_len, "micro_batch": mb,
                       "flops_per_token": flops_per_token(c, st.seq_len),
                       "memory_gib": {"states": states / GIB, "gathered_weights": gathered / GIB,
                                      "activations": act / GIB, "loss_head": head / GIB, "total": total / GIB}})
    return {"params": n, "world": world, "tp": tp, "dp": dp, "shard_group": shard, "stages": stages}


def format_estimate(e: dict) -> str:
    n = e["params"]
    size = f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"
    lines = [f"parameters: {size}   processes: {e['world']} (dp {e['dp']} x tp {e['tp']}, "
             f"states sharded over {e['shard_group']})"]
    for s in e["stages"]:
        m = s["memory_gib"]
        lines.append(f"{s['stage']}: seq {s['seq_len']} x micro_batch {s['micro_batch']}: "
                     f"{s['flops_per_token'] / 1e9:.2f} GFLOP/token; memory/GPU ~{m['total']:.1f} GiB "
                     f"(states {m['states']:.1f}, weights in flight {m['gathered_weights']:.1f}, "
                     f"activations {m['activations']:.1f}, loss head {m['loss_head']:.1f})")
    return "\n".join(lines)
