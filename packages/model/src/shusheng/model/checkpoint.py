"""Hugging Face checkpoint folders: load and save, in InternLM2 or Llama-family naming.

A checkpoint is a folder with `config.json`, weights (`model.safetensors`, sharded `model-0000k-of-0000n.safetensors`
with `model.safetensors.index.json`, or `pytorch_model*.bin`), `generation_config.json` and tokenizer files.
Our module names are InternLM2's, so InternLM2 keys map by prefix alone; Llama-family keys (`q_proj/k_proj/v_proj`,
`gate/up/down_proj`, `input_layernorm`, ...) are renamed and q/k/v are fused into the grouped `wqkv`
(`[q_1..q_g, k, v]` per KV head) on load and split again on save. A Llama-format save loads in plain `transformers`.

Writes go to a temporary folder that is renamed into place when complete, so a crash never leaves a half checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .config import ModelConfig
from .fileio import atomic_dir, write_json
from .model import Transformer

SAVE_FORMATS = ("internlm2", "llama", "qwen2", "mistral")
# wrapper prefixes that activation checkpointing, torch.compile and FSDP1 insert into parameter names
_WRAPPER_PARTS = re.compile(r"(_checkpoint_wrapped_module|_orig_mod|_fsdp_wrapped_module)\.")


class CheckpointError(ValueError):
    """A checkpoint folder does not match what its config says (missing, unexpected or mis-shaped tensors)."""


# ---- names -----------------------------------------------------------------------------------------------------

_LLAMA_RENAMES = [  # (llama suffix, ours) within a layer
    ("self_attn.o_proj", "attention.wo"),
    ("mlp.gate_proj", "feed_forward.w1"),
    ("mlp.up_proj", "feed_forward.w3"),
    ("mlp.down_proj", "feed_forward.w2"),
    ("input_layernorm", "attention_norm"),
    ("post_attention_layernorm", "ffn_norm"),
]


def _split_wqkv(t: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    """wqkv weight (rows, hidden) or bias (rows,) -> q, k, v in plain head order."""
    KV, g, D = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
    grouped = t.reshape(KV, g + 2, D, *t.shape[1:])
    q = grouped[:, :g].reshape(KV * g * D, *t.shape[1:])
    return q, grouped[:, g].reshape(KV * D, *t.shape[1:]), grouped[:, g + 1].reshape(KV * D, *t.shape[1:])


def _fuse_wqkv(q: Tensor, k: Tensor, v: Tensor, cfg: ModelConfig) -> Tensor:
    KV, g, D = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
    rest = q.shape[1:]
    grouped = torch.cat(
        [q.reshape(KV, g, D, *rest), k.reshape(KV, 1, D, *rest), v.reshape(KV, 1, D, *rest)], dim=1
    )
    return grouped.reshape(KV * (g + 2) * D, *rest)


def to_hf_state_dict(sd: dict[str, Tensor], cfg: ModelConfig, fmt: str) -> dict[str, Tensor]:
    """Our parameter names -> the names of checkpoint format `fmt`."""
    out: dict[str, Tensor] = {}
    for name, t in sd.items():
        name = _WRAPPER_PARTS.sub("", name)
        if fmt == "internlm2":
            out[name if name.startswith("output.") else "model." + name] = t
            continue
        if name == "output.weight":
            out["lm_head.weight"] = t
            continue
        name = name.replace("tok_embeddings.", "embed_tokens.")
        m = re.match(r"layers\.(\d+)\.attention\.wqkv\.(weight|bias)$", name)
        if m:
            for proj, part in zip("qkv", _split_wqkv(t, cfg), strict=True):
                out[f"model.layers.{m[1]}.self_attn.{proj}_proj.{m[2]}"] = part
            continue
        for theirs, ours in _LLAMA_RENAMES:
            name = name.replace(f".{ours}.", f".{theirs}.")
        out["model." + name] = t
    return out


def from_hf_state_dict(sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Checkpoint names (InternLM2 or Llama-family, detected per key) -> our parameter names."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for name, t in sd.items():
        if name in ("output.weight", "lm_head.weight"):
            out["output.weight"] = t
            continue
        name = name.removeprefix("model.")
        name = name.replace("embed_tokens.", "tok_embeddings.")
        m = re.match(r"layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", name)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = t
            continue
        for theirs, ours in _LLAMA_RENAMES:
            name = name.replace(f".{theirs}.", f".{ours}.")
        out[name] = t
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted(f"model.layers.{layer}.self_attn.{p}_proj.{kind}" for p in {"q", "k", "v"} - set(parts))
            raise CheckpointError(f"missing tensors: {missing}")
        out[f"layers.{layer}.attention.wqkv.{kind}"] = _fuse_wqkv(parts["q"], parts["k"], parts["v"], cfg)
    return out


# ---- reading ---------------------------------------------------------------------------------------------------


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [path / f for f in sorted(set(weight_map.values()))]
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin"):
        files = sorted(path.glob(pattern))
        if files:
            return files
    raise FileNotFoundError(
        f"no weights in {path}: expected model.safetensors, model.safetensors.index.json with shards, "
        "or pytorch_model*.bin"
    )


def read_tensors(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint folder, by their stored names and dtypes."""
    tensors: dict[str, Tensor] = {}
    for f in _weight_files(Path(path)):
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint shard {f} (listed in the index) is missing")
        if f.suffix == ".safetensors":
            with safe_open(f, framework="pt") as h:
                for k in h.keys():
                    tensors[k] = h.get_tensor(k)
        else:
            tensors.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
    return tensors


def load_pretrained(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> Transformer:
    """Load a Hugging Face checkpoint folder (InternLM2 or Llama-family naming).

    Args:
        path: the folder holding config.json and the weights.
        dtype: cast the weights to this dtype; default keep the stored dtype.
        device: where the weights go.

    Returns:
        A `Transformer` in eval mode.

    Raises:
        FileNotFoundError: no config.json or no weights.
        ValueError: unsupported model_type in config.json.
        CheckpointError: missing, unexpected or mis-shaped tensors (all of them listed).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    cfg = ModelConfig.from_file(path)
    sd = from_hf_state_dict(read_tensors(path), cfg)
    if cfg.tie_word_embeddings:
        sd.pop("output.weight", None)
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("output.weight")
    _check_tensors(sd, expected, cfg)
    stored = next(iter(sd.values())).dtype
    sd = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in sd.items()}
    if cfg.tie_word_embeddings:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    model.tie_weights()
    model.config.torch_dtype = str(dtype or stored).removeprefix("torch.")
    return model.eval()


def _check_tensors(sd: dict[str, Tensor], expected: dict[str, torch.Size], cfg: ModelConfig) -> None:
    problems = []
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        problems.append(f"missing tensors: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {unexpected}")
    bad = [f"{k}: checkpoint {tuple(sd[k].shape)} vs config {tuple(s)}" for k, s in expected.items()
           if k in sd and sd[k].shape != s]
    if bad:
        problems.append("shape mismatches (does config.json match the weights?): " + "; ".join(bad))
    if problems:
        raise CheckpointError(f"checkpoint does not match its {cfg.model_type} config: " + " | ".join(problems))


# ---- writing ---------------------------------------------------------------------------------------------------


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size, re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size {size!r} is not a size like '5GB', '500MB' or an int of bytes")
    unit = (m[2] or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m[1]) * scale)


def _shards(sd: dict[str, Tensor], max_bytes: int) -> list[dict[str, Tensor]]:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for k, t in sd.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += n
    return shards


def save_pretrained(
    model: Transformer,
    path: str | Path,
    format: str = "llama",
    max_shard_size: int | str = "5GB",
    tokenizer: Any = None,
    generation_config: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a Hugging Face checkpoint folder.

    Args:
        model: the model (unwrapped by name: compile / activation-checkpoint prefixes are stripped). Under FSDP or
            TP, gather a full state dict first and pass a model holding it.
        path: the folder to create or replace, atomically (written beside it under a temporary name, then renamed).
        format: "llama" (loads in plain transformers), "internlm2" (InternLM2 remote-code naming), "qwen2", "mistral".
        max_shard_size: bytes per safetensors shard ("5GB", "500MB" or an int); above it, an index is written.
        tokenizer: an object with `save(folder)` (a `shusheng.model.tokenizer.Tokenizer`) to store beside the weights.
        generation_config: extra generation_config.json fields (bos/eos/pad come from the model config).
        dtype: cast the weights when writing; default keep the model's dtype.

    Returns:
        The checkpoint folder.
    """
    if format not in SAVE_FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose from {SAVE_FORMATS}")
    cfg = model.config
    path = Path(path)
    sd = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("output.weight", None)
    hf = to_hf_state_dict(sd, cfg, format)
    config = cfg.to_hf(format)
    config["torch_dtype"] = str(next(iter(hf.values())).dtype).removeprefix("torch.")
    with atomic_dir(path) as tmp:
        _write_weights(hf, tmp, _parse_size(max_shard_size))
        gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
        gen.update(generation_config or {})
        write_json(tmp / "config.json", config)
        write_json(tmp / "generation_config.json", gen)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return path


def _write_weights(hf: dict[str, Tensor], folder: Path, max_bytes: int) -> None:
    shards = _shards(hf, max_bytes)
    if len(shards) == 1:
        save_file(shards[0], folder / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in hf.values())
    write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
