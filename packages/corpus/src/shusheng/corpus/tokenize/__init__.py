"""Tokenization and packing: train or load a tokenizer, write Megatron `.bin`/`.idx` shards with metadata."""

from .megatron import IndexedDatasetReader, IndexedDatasetWriter, token_dtype
from .pack import tokenize_to_shards
from .train import DEFAULT_SPECIALS, Encoder, load_encoder, train_tokenizer

__all__ = [
    "DEFAULT_SPECIALS",
    "Encoder",
    "IndexedDatasetReader",
    "IndexedDatasetWriter",
    "load_encoder",
    "token_dtype",
    "tokenize_to_shards",
    "train_tokenizer",
]
