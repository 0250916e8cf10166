"""shusheng.model: the model definition shared by every Shusheng package.

Config and presets, the InternLM2 / Llama-family decoder, attention backends, Hugging Face checkpoint I/O,
tokenizers, chat templates with the InternLM2 tool protocol, the reference `generate`, and parallelize plans.
"""

from .attention import SDPAAttention, VarlenAttention, cu_seqlens_from_lengths, varlen_attention
from .checkpoint import CheckpointError, load_pretrained, save_pretrained
from .config import PRESETS, ModelConfig
from .generate import GenerationOutput, generate
from .model import Transformer, build_model
from .tokenizer import IncrementalDetokenizer, Tokenizer, load_tokenizer

__all__ = [
    "PRESETS",
    "CheckpointError",
    "GenerationOutput",
    "IncrementalDetokenizer",
    "ModelConfig",
    "SDPAAttention",
    "Tokenizer",
    "Transformer",
    "VarlenAttention",
    "build_model",
    "cu_seqlens_from_lengths",
    "generate",
    "load_pretrained",
    "load_tokenizer",
    "save_pretrained",
    "varlen_attention",
]
__version__ = "0.1.0"
