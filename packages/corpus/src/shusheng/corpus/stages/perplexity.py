"""Perplexity under a small language model (the `model` extra: shusheng-model is imported only here, lazily).

Documents a small LM finds very surprising (noise, boilerplate in odd languages) or suspiciously predictable
(repeated templates) can be dropped by thresholds; the perplexity is kept in metadata either way, for the report
and for long-context perplexity-difference selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..document import Document, Removed
from .base import Stage, register


@register
@dataclass
class Perplexity(Stage):
    name: ClassVar[str] = "perplexity"
    model: str = ""  # a checkpoint folder (config.json, weights, tokenizer files)
    min_perplexity: float | None = None
    max_perplexity: float | None = None
    max_tokens: int = 2048  # the first tokens of a document are scored
    device: str = "cpu"
    metadata_key: str = "perplexity"

    def __post_init__(self):
        if not self.model:
            raise ValueError("model is required: a checkpoint folder of a small LM")
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {self.max_tokens}")
        self._lm = None

    def setup(self) -> None:
        try:
            from shusheng.model import load_pretrained, load_tokenizer
        except ImportError:
            raise ImportError("the perplexity stage needs `pip install shusheng-corpus[model]`") from None
        self._lm = load_pretrained(self.model, device=self.device).eval()
        self._tok = load_tokenizer(self.model)

    def perplexity(self, text: str) -> float | None:
        import torch

        if self._lm is None:
            self.setup()
        ids = self._tok.encode(text, add_bos=self._tok.bos_id is not None)[: self.max_tokens]
        if len(ids) < 2:
            return None
        x = torch.tensor([ids], device=self.device)
        with torch.no_grad():
            logits = self._lm(x)[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, x[0, 1:]).item()
        return math.exp(min(nll, 50.0))

    def process(self, doc: Document) -> Document | Removed:
        ppl = self.perplexity(doc.text)
        if ppl is None:
            return doc
        doc.metadata[self.metadata_key] = ppl
        if self.min_perplexity is not None and ppl < self.min_perplexity:
            return Removed("perplexity_too_low")
        if self.max_perplexity is not None and ppl > self.max_perplexity:
            return Removed("perplexity_too_high")
        return doc
