"""Model-based quality: a `Scorer` protocol, a tiny hashed n-gram classifier, and the quality / long-context stages.

`HashedNgramClassifier` is a fastText-style linear classifier in plain numpy: the lower-cased words of a text
(`rules.split_words`, so Han characters for Chinese) and their word n-grams up to `ngrams` are hashed (CRC32, stable
across processes) into `num_buckets` features with log(1 + count) weights, L2-normalized per text; a logistic
regression on them is trained by mini-batch SGD with a linearly decaying learning rate (as fastText does). It is
meant for the usual recipe of training a "looks like the reference corpus" classifier on a few thousand labelled
documents (e.g. reference pages = 1, random web = 0, as in GPT-3's and DCLM's quality filters); score = P(label 1).

`long_context` selects documents for long-context training: long enough, not built from repeated lines, mostly
letters, and optionally with a long-range dependency score from a user function: the perplexity drop from seeing the
long context (ProLong: Chen et al. 2024, "Long Context is Not Long at All"), computed with your own model.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..document import Document, Removed
from .base import Stage, register
from .rules import check_min, check_ratio, non_empty_lines, split_words
from .safety import load_callable, load_object

_FORMAT = "shusheng-hashed-ngram-v1"


@runtime_checkable
class Scorer(Protocol):
    def score(self, texts: list[str]) -> list[float]: ...


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


class HashedNgramClassifier:
    """Binary logistic regression over hashed word n-grams (a `Scorer`).

    Args:
        num_buckets: number of hashed features (fastText uses 2M for n-grams; 2**20 is plenty for a filter).
        ngrams: longest word n-gram (1 = bag of words, 2 = also bigrams).
    """

    def __init__(self, num_buckets: int = 2**20, ngrams: int = 2):
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        if ngrams < 1:
            raise ValueError(f"ngrams must be >= 1, got {ngrams}")
        self.num_buckets = num_buckets
        self.ngrams = ngrams
        self.weights = np.zeros(num_buckets, dtype=np.float32)
        self.bias = 0.0

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(bucket indices, values) of one text: log(1 + count) of each hashed n-gram, L2-normalized."""
        words = [w.lower() for w in split_words(text)]
        grams = [" ".join(words[i:i + n]) for n in range(1, self.ngrams + 1) for i in range(len(words) - n + 1)]
        if not grams:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        hashes = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.int64, count=len(grams))
        idx, counts = np.unique(hashes % self.num_buckets, return_counts=True)
        val = np.log1p(counts).astype(np.float32)
        return idx, val / np.linalg.norm(val)

    def _logits(self, feats: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Logits of a batch of texts (B,), and its flattened sparse matrix: (row, bucket, value) arrays (nnz,)."""
        rows = np.repeat(np.arange(len(feats)), [len(i) for i, _ in feats])
        idx = np.concatenate([np.zeros(0, dtype=np.int64), *(i for i, _ in feats)])
        val = np.concatenate([np.zeros(0, dtype=np.float32), *(v for _, v in feats)])
        logits = np.bincount(rows, weights=self.weights[idx] * val, minlength=len(feats)) + self.bias
        return logits, (rows, idx, val)

    def train(self, texts: Sequence[str], labels: Sequence[int], epochs: int = 10, lr: float = 2.0,
              batch_size: int = 16, seed: int = 0) -> HashedNgramClassifier:
        """Fit on `texts` with labels 0 / 1 (weights start from zero). Returns self.

        Features are L2-normalized, so the log loss is smooth enough for a large learning rate (2.0) to be stable.
        """
        y = np.asarray(labels, dtype=np.float64)
        if len(texts) == 0 or len(texts) != len(y):
            raise ValueError(f"need as many labels as texts (>= 1), got {len(texts)} texts and {len(y)} labels")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be 0 or 1")
        if epochs < 1 or lr <= 0 or batch_size < 1:
            raise ValueError(f"need epochs >= 1, lr > 0, batch_size >= 1; got {epochs}, {lr}, {batch_size}")
        feats = [self.features(t) for t in texts]
        self.weights = np.zeros(self.num_buckets, dtype=np.float32)
        self.bias = 0.0
        rng = np.random.default_rng(seed)
        total_steps = epochs * math.ceil(len(y) / batch_size)
        step = 0
        for _ in range(epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(y), batch_size):
                batch = order[start:start + batch_size]
                logits, (rows, idx, val) = self._logits([feats[i] for i in batch])
                grad = (_sigmoid(logits) - y[batch]) / len(batch)  # d(mean log loss)/d(logit), (B,)
                step_lr = lr * (1.0 - step / total_steps)
                np.add.at(self.weights, idx, (-step_lr * grad[rows] * val).astype(np.float32))
                self.bias -= step_lr * float(grad.sum())
                step += 1
        return self

    def score(self, texts: list[str]) -> list[float]:
        """P(label 1) of each text."""
        logits, _ = self._logits([self.features(t) for t in texts])
        return [float(p) for p in _sigmoid(logits)]

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:  # a file object, so numpy does not append ".npz"
            np.savez_compressed(f, format=np.array(_FORMAT), weights=self.weights, bias=np.array(self.bias),
                                num_buckets=np.array(self.num_buckets), ngrams=np.array(self.ngrams))

    @classmethod
    def load(cls, path: str | Path) -> HashedNgramClassifier:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"classifier file {path} does not exist")
        with np.load(path) as z:
            if "format" not in z or str(z["format"]) != _FORMAT:
                raise ValueError(f"{path} is not a HashedNgramClassifier file (expected format {_FORMAT})")
            model = cls(int(z["num_buckets"]), int(z["ngrams"]))
            model.weights = z["weights"].astype(np.float32)
            model.bias = float(z["bias"])
        return model


def load_scorer(spec: str | Scorer, option: str = "scorer") -> Scorer:
    """A Scorer from an object, or from "package.module:name" naming a Scorer, a Scorer class, or a factory."""
    if not isinstance(spec, str):
        return spec
    obj = load_object(spec, option)
    is_factory = isinstance(obj, type) or (callable(obj) and not hasattr(obj, "score"))
    scorer = obj() if is_factory else obj
    if not isinstance(scorer, Scorer):
        raise ValueError(f"{option}: {spec!r} gave {type(scorer).__name__}, which has no score(texts) method")
    return scorer


@register
@dataclass
class QualityScore(Stage):
    """Score documents with a model: metadata[metadata_key] = score; drop below min_score ("quality_score").

    Exactly one of `model` (a HashedNgramClassifier file) or `scorer` (a Scorer, or "package.module:name" naming a
    Scorer, a Scorer class or a zero-argument factory). min_score None keeps everything (annotation only).
    """

    name = "quality_score"
    model: str | None = None
    scorer: str | Scorer | None = None
    min_score: float | None = 0.5  # project default for P(high quality); no published threshold for this model
    metadata_key: str = "quality_score"

    def __post_init__(self):
        if (self.model is None) == (self.scorer is None):
            raise ValueError("set exactly one of model (a classifier file) and scorer ('package.module:name')")
        if isinstance(self.scorer, str) and ":" not in self.scorer:
            raise ValueError(f"scorer must look like 'package.module:name', got {self.scorer!r}")
        self._scorer: Scorer | None = None

    def setup(self) -> None:
        if self._scorer is None:
            self._scorer = HashedNgramClassifier.load(self.model) if self.model else load_scorer(self.scorer)

    def process(self, doc: Document) -> Document | Removed:
        self.setup()
        score = float(self._scorer.score([doc.text])[0])
        doc.metadata[self.metadata_key] = score
        if self.min_score is not None and score < self.min_score:
            return Removed("quality_score")
        return doc


@register
@dataclass
class LongContext(Stage):
    """Keep documents suited to long-context training.

    Drops, in order: shorter than min_chars ("long_context_min_chars"); more than max_dup_line_frac of non-empty
    lines repeating an earlier one ("long_context_dup_lines"); letters below min_alpha_ratio of non-space characters
    ("long_context_alpha_ratio"); with `ppl_diff_scorer` ("package.module:function", fn(text) -> float, e.g. the
    perplexity of the text's tail read alone minus read after its long prefix, higher = more long-range dependency),
    a score below min_ppl_diff ("long_context_ppl_diff"); the score goes to metadata["long_context_ppl_diff"].
    """

    name = "long_context"
    min_chars: int = 32_768  # project default: about 8K tokens of English, 20K of Chinese
    max_dup_line_frac: float | None = 0.3  # Gopher's duplicate line fraction (Rae et al. 2021, Table A1)
    min_alpha_ratio: float | None = 0.5  # project default: code is ~0.65 letters, prose ~0.8, tables of numbers less
    ppl_diff_scorer: str | None = None
    min_ppl_diff: float | None = None

    def __post_init__(self):
        check_min("min_chars", self.min_chars)
        check_ratio("max_dup_line_frac", self.max_dup_line_frac)
        check_ratio("min_alpha_ratio", self.min_alpha_ratio)
        if self.ppl_diff_scorer is not None and ":" not in self.ppl_diff_scorer:
            raise ValueError(f"ppl_diff_scorer must look like 'package.module:function', got {self.ppl_diff_scorer!r}")
        if self.min_ppl_diff is not None and self.ppl_diff_scorer is None:
            raise ValueError("min_ppl_diff needs a ppl_diff_scorer ('package.module:function')")
        self._fn: Callable[[str], float] | None = None

    def setup(self) -> None:
        if self.ppl_diff_scorer is not None and self._fn is None:
            self._fn = load_callable(self.ppl_diff_scorer, "ppl_diff_scorer")

    def process(self, doc: Document) -> Document | Removed:
        text = doc.text
        if len(text) < self.min_chars:
            return Removed("long_context_min_chars")
        if self.max_dup_line_frac is not None:
            lines = non_empty_lines(text)
            if lines and 1 - len(set(lines)) / len(lines) > self.max_dup_line_frac:
                return Removed("long_context_dup_lines")
        if self.min_alpha_ratio is not None:
            chars = [c for c in text if not c.isspace()]
            if not chars or sum(c.isalpha() for c in chars) / len(chars) < self.min_alpha_ratio:
                return Removed("long_context_alpha_ratio")
        if self.ppl_diff_scorer is not None:
            self.setup()
            score = float(self._fn(text))
            doc.metadata["long_context_ppl_diff"] = score
            if self.min_ppl_diff is not None and score < self.min_ppl_diff:
                return Removed("long_context_ppl_diff")
        return doc
