"""Engine configuration: one flat dataclass, validated in `__post_init__`."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class EngineConfig:
    """How the engine runs a checkpoint.

    Attributes:
        model: checkpoint folder (config.json, safetensors, tokenizer files).
        device: "auto" (cuda when available, else cpu), "cuda", "cuda:1", "cpu".
        dtype: "auto" (the checkpoint's dtype on GPU, float32 on CPU), "bfloat16", "float16", "float32".
        max_num_seqs: sequences in one batch at most.
        max_num_batched_tokens: tokens computed in one step at most (the chunked-prefill budget).
        max_model_len: prompt + output tokens per sequence at most; default the checkpoint's max_position_embeddings.
        block_size: tokens per KV-cache block.
        gpu_memory_utilization: fraction of the GPU's memory the engine may use (weights, activations, KV cache).
        num_kv_blocks: fix the KV pool size instead of sizing it from free memory (tests, small pools).
        cpu_kv_cache_gb: KV pool size on CPU, where free memory is not profiled.
        enable_prefix_caching: reuse KV blocks of identical prompt prefixes across requests.
        enforce_eager: never capture CUDA graphs (decode or prefill steps).
        max_graph_batch_size: the largest decode batch captured as a CUDA graph.
        max_prefill_graph_tokens: the largest prefill or mixed step (in tokens) run as CUDA graphs cut at each
            attention call (`prefill_graphs.py`); larger steps, and every step when 0, run eager.
        seed: seed of the global sampling RNG (per-request seeds are separate).
        async_scheduling: overlap the host's work on a step's results (detokenizing, stop checks, outputs) with
            the next step on the device: the next step is scheduled and launched first, reading the tokens just
            sampled straight from device memory. Steps with penalties or prompt logprobs still run one at a
            time.
        tensor_parallel_size: shard the model over this many local GPUs (rank r on cuda:r; the CPU with gloo when
            device is "cpu"), one process per rank (see tensor_parallel.py). `gpu_memory_utilization` applies to
            each card.
    """

    model: str = ""
    device: str = "auto"
    dtype: str = "auto"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    num_kv_blocks: int | None = None
    cpu_kv_cache_gb: float = 1.0
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    max_graph_batch_size: int = 256
    max_prefill_graph_tokens: int = 2048
    seed: int = 0
    async_scheduling: bool = True
    tensor_parallel_size: int = 1

    def __post_init__(self):
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "max_graph_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_prefill_graph_tokens < 0:
            raise ValueError(f"max_prefill_graph_tokens must be >= 0 (0: eager prefill), got "
                             f"{self.max_prefill_graph_tokens}")
        if self.block_size & (self.block_size - 1) or self.block_size < 16:
            raise ValueError(f"block_size must be a power of two >= 16, got {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.tensor_parallel_size > 1 and self.device.startswith("cuda:"):
            raise ValueError(
                f"device {self.device!r} names one card, but tensor_parallel_size {self.tensor_parallel_size} puts "
                "rank r on cuda:r; use device='cuda' and choose the cards with CUDA_VISIBLE_DEVICES"
            )
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")

    @classmethod
    def from_kwargs(cls, model: str, **kwargs) -> EngineConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown engine options {unknown}; known options: {sorted(names - {'model'})}")
        return cls(model=str(model), **kwargs)
