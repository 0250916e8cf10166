"""Benchmark decontamination: drop training documents that share a word n-gram (13 by default) with a benchmark.

The 13-gram overlap test of GPT-3 (Brown et al. 2020, section 4 and appendix C), with casing, punctuation and
whitespace ignored (the word tokenization of `dedup.minhash.shingle_hashes`). Stricter than GPT-3, which cut the
overlapping span out of a document, this drops the whole document. N-grams are compared as 64-bit hashes (a false match
needs a 64-bit collision). Texts shorter than n words have no n-grams: they neither contaminate nor get dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..dedup.minhash import shingle_hashes
from ..document import Document, Removed
from .base import Stage, register


def read_benchmark_texts(path: str | Path, fields: list[str]) -> list[str]:
    """Texts of one benchmark file: from `.jsonl` records, the string (or list of strings) values of `fields`;
    from any other file, each non-empty line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        for name in fields:
            value = record.get(name)
            texts.extend([value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)])
    if lines and not texts:
        raise ValueError(f"{path}: no record has a text field among {fields}; set `fields`")
    return texts


@register
@dataclass
class Decontaminate(Stage):
    name: ClassVar[str] = "decontaminate"
    benchmark_files: list[str] = field(default_factory=list)  # .jsonl (fields below) or plain text, one per line
    fields: list[str] = field(default_factory=lambda: ["text"])
    ngram_size: int = 13
    min_overlap: int = 1  # distinct shared n-grams needed to drop a document

    def __post_init__(self):
        if not self.benchmark_files:
            raise ValueError("benchmark_files is empty")
        if isinstance(self.benchmark_files, str) or isinstance(self.fields, str):
            raise ValueError("benchmark_files and fields must be lists")
        if self.ngram_size < 1 or self.min_overlap < 1:
            raise ValueError(f"ngram_size and min_overlap must be >= 1, got {self.ngram_size}, {self.min_overlap}")
        self._ngrams: np.ndarray | None = None

    def setup(self) -> None:
        texts = [t for path in self.benchmark_files for t in read_benchmark_texts(path, self.fields)]
        hashes, _ = shingle_hashes(texts, "word", self.ngram_size, short_docs=False)
        self._ngrams = np.unique(hashes)  # sorted, for searchsorted membership

    def process(self, doc: Document) -> Document | Removed:
        if self._ngrams is None:
            self.setup()
        hashes = np.unique(shingle_hashes([doc.text], "word", self.ngram_size, short_docs=False)[0])
        if len(hashes) == 0 or len(self._ngrams) == 0:
            return doc
        pos = np.searchsorted(self._ngrams, hashes).clip(max=len(self._ngrams) - 1)
        hits = int(np.count_nonzero(self._ngrams[pos] == hashes))
        return Removed("decontam") if hits >= self.min_overlap else doc
