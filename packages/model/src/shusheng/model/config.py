"""Model configuration: one flat dataclass, presets by name, and HF `config.json` conversion.

`ModelConfig` describes every model the package runs: InternLM2 (`model_type: internlm2`) and the Llama family
(`llama`, `qwen2`, `mistral`), which share one architecture (RMSNorm, RoPE, GQA, SwiGLU) and differ only in
tensor names, biases and rope scaling. `from_hf` / `to_hf` read and write Hugging Face `config.json` dicts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

MODEL_TYPES = ("internlm2", "llama", "qwen2", "mistral")
ROPE_TYPES = ("none", "linear", "dynamic", "llama3")


@dataclass
class ModelConfig:
    vocab_size: int = 92544
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_layers: int = 24
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 0  # 0: hidden_size // num_heads
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rope_type: str = "none"  # none | linear | dynamic (NTK, as HF computes it) | llama3
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_position_embeddings: int = 8192  # llama3 only
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    sliding_window: int | None = None
    model_type: str = "internlm2"  # the checkpoint format this config came from
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 2
    torch_dtype: str = "bfloat16"
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.head_dim == 0:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_heads ({self.num_heads}); "
                    "set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads}) for GQA"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type {self.rope_type!r} is not supported; use one of {ROPE_TYPES}")
        if self.rope_type != "none" and self.rope_factor < 1.0:
            raise ValueError(f"rope_factor must be >= 1 for rope_type {self.rope_type!r}, got {self.rope_factor}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not supported; use one of {MODEL_TYPES}")

    @property
    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        D, H, KV, Dh, F = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate_size
        attn = D * (H + 2 * KV) * Dh + H * Dh * D
        attn += (H + 2 * KV) * Dh * self.qkv_bias + D * self.o_bias
        layer = attn + 3 * D * F + 2 * D
        emb = self.vocab_size * D * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + emb + D

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelConfig:
        """A preset by name (see `PRESETS`), with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
        base = PRESETS[name]
        if "head_dim" not in overrides and base.head_dim * base.num_heads == base.hidden_size:
            overrides["head_dim"] = 0  # re-derive it when hidden_size or num_heads are overridden
        return replace(base, **overrides)

    # ---- Hugging Face config.json ----

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a Hugging Face `config.json` dict (InternLM2 or Llama-family)."""
        model_type = d.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r} in config.json; shusheng.model reads {', '.join(MODEL_TYPES)}"
            )
        hidden, heads = d["hidden_size"], d["num_attention_heads"]
        # transformers v5 writes rope settings as `rope_parameters`; v4 as rope_theta + rope_scaling.
        rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
        rope_type = rope.get("rope_type", rope.get("type", "none")) or "none"
        rope_type = "none" if rope_type == "default" else rope_type
        theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        if model_type == "internlm2":
            qkv_bias = o_bias = bool(d.get("bias", False))
        elif model_type == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = bool(d.get("attention_bias", False))
        if d.get("mlp_bias"):
            raise ValueError("mlp_bias=True checkpoints are not supported (no released Llama-family model uses it)")
        window = d.get("sliding_window")
        if model_type == "qwen2" and not d.get("use_sliding_window", False):
            window = None
        if model_type == "llama":
            window = None
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=hidden,
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or hidden // heads,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            rope_theta=float(theta),
            rope_type=rope_type,
            rope_factor=float(rope.get("factor", 1.0)),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_position_embeddings=int(rope.get("original_max_position_embeddings", 8192)),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            sliding_window=window,
            model_type=model_type,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
            torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "float32"),
            initializer_range=d.get("initializer_range", 0.02),
        )

    def to_hf(self, model_type: str | None = None) -> dict[str, Any]:
        """A Hugging Face `config.json` dict in the given format (default: this config's own)."""
        model_type = model_type or self.model_type
        if model_type not in MODEL_TYPES:
            raise ValueError(f"cannot write model_type {model_type!r}; use one of {MODEL_TYPES}")
        d: dict[str, Any] = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": self._hf_rope_scaling(model_type),
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.torch_dtype,
            "use_cache": True,
        }
        if model_type == "internlm2":
            if self.qkv_bias != self.o_bias:
                raise ValueError("InternLM2 format has one `bias` flag for wqkv and wo; this model differs")
            d.pop("head_dim")  # InternLM2 derives it from hidden_size / heads
            if self.head_dim * self.num_heads != self.hidden_size:
                raise ValueError("InternLM2 format needs head_dim * num_heads == hidden_size")
            d.update(
                architectures=["InternLM2ForCausalLM"],
                model_type="internlm2",
                bias=self.qkv_bias,
                attn_implementation="eager",
                auto_map={
                    "AutoConfig": "configuration_internlm2.InternLM2Config",
                    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
                    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                },
            )
        elif model_type == "qwen2":
            if not self.qkv_bias or self.o_bias:
                raise ValueError("qwen2 format means q/k/v biases and no o_proj bias; this model differs")
            d.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                     use_sliding_window=self.sliding_window is not None,
                     sliding_window=self.sliding_window, max_window_layers=self.num_layers)
        else:
            if self.qkv_bias != self.o_bias:
                raise ValueError(
                    f"{model_type} format has one attention_bias flag for q/k/v/o; this model has q/k/v biases "
                    "only: save with format='qwen2'"
                )
            arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}[model_type]
            d.update(architectures=[arch], model_type=model_type, attention_bias=self.qkv_bias, mlp_bias=False)
            if model_type == "mistral":
                d["sliding_window"] = self.sliding_window
            elif self.sliding_window is not None:
                raise ValueError("llama format has no sliding window; save with format='mistral'")
        return d

    def _hf_rope_scaling(self, model_type: str) -> dict[str, Any] | None:
        if self.rope_type == "none":
            return None
        if model_type == "internlm2":
            if self.rope_type not in ("linear", "dynamic"):
                raise ValueError(f"InternLM2 format has no {self.rope_type!r} rope scaling")
            return {"type": self.rope_type, "factor": self.rope_factor}
        out: dict[str, Any] = {"rope_type": self.rope_type, "factor": self.rope_factor}
        if self.rope_type == "llama3":
            out.update(
                low_freq_factor=self.rope_low_freq_factor,
                high_freq_factor=self.rope_high_freq_factor,
                original_max_position_embeddings=self.rope_original_max_position_embeddings,
            )
        return out

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read a `config.json` (a file or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}: a checkpoint folder must hold one")
        return cls.from_hf(json.loads(path.read_text()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known fields: {sorted(names)}")
        return cls(**d)


_IL2 = dict(vocab_size=92544, max_position_embeddings=32768, rope_theta=1e6, rope_type="dynamic", rope_factor=2.0)
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4,
                        num_kv_heads=2, max_position_embeddings=256, rope_theta=10000.0, torch_dtype="float32"),
    "internlm2-1.8b": ModelConfig(hidden_size=2048, intermediate_size=8192, num_layers=24, num_heads=16,
                                  num_kv_heads=8, **_IL2),
    "internlm2-7b": ModelConfig(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                                num_kv_heads=8, **_IL2),
    "internlm2-20b": ModelConfig(hidden_size=6144, intermediate_size=16384, num_layers=48, num_heads=48,
                                 num_kv_heads=8, **_IL2),
    "llama3-8b": ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                             num_heads=32, num_kv_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                             model_type="llama", bos_token_id=128000, eos_token_id=128001, pad_token_id=None),
}
