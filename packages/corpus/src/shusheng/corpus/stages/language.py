"""Language identification: a built-in detector for English / Chinese / code, or a fastText model.

The built-in detector works from character and word statistics (no model file):
    code   `code_score` >= code_threshold. The score mixes four signals over non-empty lines: density of code
           symbols ({}[]();=<>... among non-space characters), lines starting with a keyword (def, return, #include,
           const, ...), lines ending in ; { } ( ) [ ] :, and indented lines.
    zh/ja  share of CJK characters among letter-bearing words (a Han character is one word, see rules.split_words);
           "ja" when kana make up at least a fifth of the CJK characters.
    en     share of Latin-script words, times how English they are: the fraction of them among the 100 most frequent
           English words, saturating at 25% (running English text is at 40-50%).
    other  the rest (other scripts, Latin-script languages other than English). "unknown" for text without letters.
The label is the highest-scoring one and language_score its score, in [0, 1].

With `fasttext_model` (e.g. lid.176.bin, labels "en", "zh", ...; or GlotLID, labels "eng_Latn", ...), the model
labels natural language and its probability is the score; code is still detected by the built-in code score first,
since language-id models have no code class. fastText is imported only then, and only in `setup()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..document import Document, Removed
from .base import Stage, register
from .rules import check_ratio, is_cjk, split_words

# Fry's 100 most frequent English words (lowercase).
_EN_WORDS = frozenset("""
the of and to a in is you that it he was for on are as with his they i at be this have from or one had by word but not
what all were we when your can said there use an each which she do how their if will up other about out many then them
these so some her would make like him into time has look two more write go see number no way could people my than
first water been call who oil its now find long down day did get come made may part
""".split())
_KANA_RE = re.compile("[\u3040-\u30ff]")
_LATIN_WORD_RE = re.compile(r"[A-Za-z\u00c0-\u024f]+(?:['’-][A-Za-z\u00c0-\u024f]+)*")
_CODE_SYMBOLS = frozenset("{}[]()<>;=+*/\\&|#$%^~@`_:")
_CODE_LINE_END = tuple(";{}()[]:")
_CODE_KEYWORD_RE = re.compile(
    r"\s*(?:(?:def|class|import|from|return|elif|else|for|while|try|except|finally|with|function|const|let|var|"
    r"async|await|public|private|protected|static|void|int|char|float|double|bool|fn|func|package|using|namespace|"
    r"template|struct|enum|impl|pub|use|mod|switch|case|break|continue|throw|echo|export|SELECT|INSERT|UPDATE|"
    r"CREATE|DELETE)\b|if\s*\(|#include|#define|#!|//|/\*|\*/|[}\])]+;?\s*$)")


def code_score(text: str) -> float:
    """How much `text` looks like source code, in [0, 1]; prose scores near 0, most code above 0.5."""
    lines = [line for line in text.splitlines() if line.strip()]
    chars = [c for c in text if not c.isspace()]
    if not lines or not chars:
        return 0.0
    symbols = sum(c in _CODE_SYMBOLS for c in chars) / len(chars)
    keyword = sum(bool(_CODE_KEYWORD_RE.match(s)) for s in lines) / len(lines)
    line_end = sum(s.rstrip().endswith(_CODE_LINE_END) for s in lines) / len(lines)
    indent = sum(s.startswith(("  ", "\t")) for s in lines) / len(lines)
    return 0.4 * min(1.0, symbols / 0.08) + 0.25 * keyword + 0.2 * line_end + 0.15 * indent


def detect_language(text: str, code_threshold: float = 0.5) -> tuple[str, float]:
    """(label, score) from the built-in detector: "code", "en", "zh", "ja", "other", or "unknown" (no letters)."""
    code = code_score(text)
    if code >= code_threshold:
        return "code", round(code, 4)
    words = [w for w in split_words(text) if any(c.isalpha() for c in w)]
    if not words:
        return "unknown", 0.0
    cjk = [w for w in words if is_cjk(w)]
    latin = [w.lower() for w in words if _LATIN_WORD_RE.fullmatch(w)]
    english = min(1.0, sum(w in _EN_WORDS for w in latin) / (0.25 * len(latin))) if latin else 0.0
    cjk_label = "ja" if cjk and sum(bool(_KANA_RE.match(w)) for w in cjk) * 5 >= len(cjk) else "zh"
    scores = {cjk_label: len(cjk) / len(words), "en": len(latin) * english / len(words)}
    scores["other"] = max(0.0, 1.0 - sum(scores.values()))
    label = max(scores, key=scores.get)
    return label, round(scores[label], 4)


@register
@dataclass
class LanguageId(Stage):
    """Label each document: metadata["language"], metadata["language_score"]; optionally keep only some languages.

    Drops with "language" when the label is not in `keep` (empty: keep all) and "language_score" when the score is
    below `min_score`.
    """

    name = "language_id"
    keep: tuple[str, ...] = ()
    min_score: float = 0.0  # FineWeb keeps English at fastText score >= 0.65; 0 keeps everything
    code_threshold: float = 0.5
    fasttext_model: str | None = None  # path to a fastText language-id model; needs the `fasttext` package

    def __post_init__(self):
        self._model = None
        if isinstance(self.keep, str):
            raise ValueError(f"keep must be a list of language labels, got the string {self.keep!r}")
        self.keep = tuple(self.keep)
        check_ratio("min_score", self.min_score)
        check_ratio("code_threshold", self.code_threshold)

    def setup(self) -> None:
        if self.fasttext_model is None or self._model is not None:
            return
        try:
            import fasttext
        except ImportError:
            raise ImportError("language_id: fasttext_model is set but the `fasttext` package is not installed "
                              "(pip install fasttext-wheel), or leave fasttext_model unset for the built-in "
                              "detector") from None
        self._model = fasttext.load_model(self.fasttext_model)

    def detect(self, text: str) -> tuple[str, float]:
        if self.fasttext_model is None:
            return detect_language(text, self.code_threshold)
        code = code_score(text)
        if code >= self.code_threshold:
            return "code", round(code, 4)
        self.setup()
        labels, probs = self._model.predict(text.replace("\n", " "), k=1)
        return labels[0].removeprefix("__label__"), round(min(1.0, float(probs[0])), 4)

    def process(self, doc: Document) -> Document | Removed:
        label, score = self.detect(doc.text)
        doc.metadata["language"] = label
        doc.metadata["language_score"] = score
        if self.keep and label not in self.keep:
            return Removed("language")
        if score < self.min_score:
            return Removed("language_score")
        return doc
