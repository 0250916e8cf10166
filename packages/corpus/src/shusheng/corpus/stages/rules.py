"""Rule-based document filters: Gopher quality and repetition, C4, FineWeb, length, character distribution.

References (thresholds checked against datatrove's GopherQualityFilter, GopherRepetitionFilter, C4QualityFilter and
FineWebQualityFilter; the code here is written from the papers):
    Gopher / MassiveText: Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
        Gopher", Appendix A.1.1 (quality filter) and Table A1 (repetition thresholds).
    C4: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer", §2.2.
    FineWeb: Penedo et al. 2024, "The FineWeb Datasets: Decanting the Web for the Finest Text Data at Scale", §3.6.

Chinese. Words are whitespace-separated tokens, except that every CJK character (Han or kana) is a word of its own
(`split_words`), so word counts, ratios and n-gram repetition apply to Chinese unchanged: "50 words" means 50 Han
characters, and repetition is measured over character n-grams. The two Gopher rules that only make sense for
languages written with spaces (mean word length, English stop words) are skipped for CJK documents (`is_cjk_doc`:
by metadata["language"] when a language stage set it, otherwise by a majority of CJK words). Line rules (C4, FineWeb)
also accept Chinese sentence-final punctuation.

Line ratios are computed over non-empty lines, so the blank-line paragraph convention of a source does not decide them.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from ..document import Document, Removed
from .base import Stage, register

# ---- shared text helpers (also used by language.py and quality.py) ----

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_CJK_RE = re.compile(f"[{_CJK}]")
_TOKEN_RE = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
# All Unicode punctuation (categories P*) of the basic plane, for stripping it off the ends of tokens.
_PUNCT = "".join(c for c in map(chr, range(0x10000)) if unicodedata.category(c).startswith("P"))
CJK_LANGUAGES = frozenset({"zh", "zho", "cmn", "yue", "ja", "jpn"})


def split_words(text: str) -> list[str]:
    """Words of `text`: whitespace tokens with punctuation stripped off their ends, each CJK character on its own.

    Symbols (=, +, $) stay, so symbol runs count as words without letters.
    """
    return [w for w in (t.strip(_PUNCT) for t in _TOKEN_RE.findall(text)) if w]


def is_cjk(word: str) -> bool:
    return bool(_CJK_RE.match(word))


def is_cjk_doc(doc: Document, words: list[str]) -> bool:
    """Whether word-length and stop-word rules should be skipped: the language metadata, else most words are CJK."""
    lang = doc.metadata.get("language")
    if isinstance(lang, str) and lang:
        return re.split(r"[-_]", lang.lower())[0] in CJK_LANGUAGES
    return sum(map(is_cjk, words)) * 2 > len(words)


def non_empty_lines(text: str) -> list[str]:
    return [s for s in (line.strip() for line in text.splitlines()) if s]


# ---- config checks (also used by the other stage modules) ----


def check_ratio(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (or None to turn the rule off), got {value!r}")


def check_min(name: str, value: float | None, low: float = 0) -> None:
    if value is not None and value < low:
        raise ValueError(f"{name} must be >= {low} (or None to turn the rule off), got {value!r}")


def check_order(lo_name: str, lo: float | None, hi_name: str, hi: float | None) -> None:
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{lo_name} ({lo}) must not exceed {hi_name} ({hi})")


# ---- Gopher quality ----

_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")  # Gopher A.1.1
_BULLETS = ("•", "●", "○", "▪", "▫", "■", "□", "◦", "‣", "⁃", "-", "*")
_ELLIPSIS_RE = re.compile(r"\.\.\.|…+")  # "……" (Chinese) is one ellipsis


@register
@dataclass
class GopherQuality(Stage):
    """Gopher's quality rules (Rae et al. 2021, A.1.1); defaults are the paper's (= datatrove's) thresholds."""

    name = "gopher_quality"
    min_words: int | None = 50  # Gopher: 50 to 100,000 words
    max_words: int | None = 100_000
    min_avg_word_length: float | None = 3  # Gopher: mean word length 3 to 10 characters (skipped for CJK)
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1  # Gopher: '#' or ellipsis per word <= 0.1
    max_bullet_lines_ratio: float | None = 0.9  # Gopher: <= 90% of lines start with a bullet
    max_ellipsis_lines_ratio: float | None = 0.3  # Gopher: <= 30% of lines end with an ellipsis
    min_alpha_words_ratio: float | None = 0.8  # Gopher: >= 80% of words contain a letter
    min_stop_words: int | None = 2  # Gopher: >= 2 of the stop words (skipped for CJK)
    stop_words: tuple[str, ...] = _STOP_WORDS

    def __post_init__(self):
        for f in ("min_words", "max_words", "min_avg_word_length", "max_avg_word_length", "max_symbol_word_ratio",
                  "min_stop_words"):
            check_min(f, getattr(self, f))
        for f in ("max_bullet_lines_ratio", "max_ellipsis_lines_ratio", "min_alpha_words_ratio"):
            check_ratio(f, getattr(self, f))
        check_order("min_words", self.min_words, "max_words", self.max_words)
        check_order("min_avg_word_length", self.min_avg_word_length, "max_avg_word_length", self.max_avg_word_length)
        self.stop_words = tuple(w.lower() for w in self.stop_words)
        self._stop = frozenset(self.stop_words)

    def process(self, doc: Document) -> Document | Removed:
        text = doc.text
        words = split_words(text)
        n = len(words)
        if n == 0 or (self.min_words is not None and n < self.min_words):
            return Removed("gopher_min_words")
        if self.max_words is not None and n > self.max_words:
            return Removed("gopher_max_words")
        cjk = is_cjk_doc(doc, words)
        if not cjk:
            mean = sum(map(len, words)) / n
            if self.min_avg_word_length is not None and mean < self.min_avg_word_length:
                return Removed("gopher_min_avg_word_length")
            if self.max_avg_word_length is not None and mean > self.max_avg_word_length:
                return Removed("gopher_max_avg_word_length")
        if self.max_symbol_word_ratio is not None:
            if text.count("#") / n > self.max_symbol_word_ratio:
                return Removed("gopher_hash_ratio")
            if len(_ELLIPSIS_RE.findall(text)) / n > self.max_symbol_word_ratio:
                return Removed("gopher_ellipsis_ratio")
        lines = non_empty_lines(text)
        if self.max_bullet_lines_ratio is not None:
            if sum(s.startswith(_BULLETS) for s in lines) / len(lines) > self.max_bullet_lines_ratio:
                return Removed("gopher_bullet_lines")
        if self.max_ellipsis_lines_ratio is not None:
            if sum(s.endswith(("...", "…")) for s in lines) / len(lines) > self.max_ellipsis_lines_ratio:
                return Removed("gopher_ellipsis_lines")
        if self.min_alpha_words_ratio is not None:
            if sum(any(c.isalpha() for c in w) for w in words) / n < self.min_alpha_words_ratio:
                return Removed("gopher_alpha_words")
        if not cjk and self.min_stop_words is not None:
            if sum(w.lower() in self._stop for w in words) < self.min_stop_words:
                return Removed("gopher_stop_words")
        return doc


# ---- Gopher repetition ----


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, their characters): repeats only, the first occurrence is not counted."""
    seen: set[str] = set()
    n = chars = 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars


def _top_ngram_char_frac(words: list[str], lengths: list[int], n: int, total: int) -> float:
    """Characters covered by the most frequent word n-gram (when it occurs more than once) / all word characters."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    top, count = Counter(grams).most_common(1)[0]
    if count < 2:
        return 0.0
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if g == top:
            covered[i:i + n] = [True] * n
    return sum(ln for ln, c in zip(lengths, covered, strict=True) if c) / total


def _dup_ngram_char_frac(words: list[str], lengths: list[int], n: int, total: int) -> float:
    """Characters covered by repeated occurrences of word n-grams (each character once) / all word characters."""
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        g = tuple(words[i:i + n])
        if g in seen:
            covered[i:i + n] = [True] * n
        else:
            seen.add(g)
    return sum(ln for ln, c in zip(lengths, covered, strict=True) if c) / total


@register
@dataclass
class GopherRepetition(Stage):
    """Gopher's repetition rules (Rae et al. 2021, Table A1); defaults are the table's (= datatrove's) thresholds.

    `top_ngrams` and `dup_ngrams` are (n, max character fraction) pairs; n-grams are over `split_words`, so over
    characters for Chinese.
    """

    name = "gopher_repetition"
    max_dup_line_frac: float | None = 0.3  # Table A1: duplicate line fraction
    max_dup_para_frac: float | None = 0.3  # duplicate paragraph fraction
    max_dup_line_char_frac: float | None = 0.2  # duplicate line character fraction
    max_dup_para_char_frac: float | None = 0.2  # duplicate paragraph character fraction
    top_ngrams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))  # top n-gram character fraction
    dup_ngrams: tuple[tuple[int, float], ...] = (  # duplicate n-gram character fraction
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

    def __post_init__(self):
        for f in ("max_dup_line_frac", "max_dup_para_frac", "max_dup_line_char_frac", "max_dup_para_char_frac"):
            check_ratio(f, getattr(self, f))
        for f in ("top_ngrams", "dup_ngrams"):
            try:
                pairs = tuple((int(n), float(frac)) for n, frac in getattr(self, f))
            except (TypeError, ValueError):
                raise ValueError(f"{f} must be a list of [n, max_fraction] pairs, got {getattr(self, f)!r}") from None
            for n, frac in pairs:
                if n < 1 or not 0.0 <= frac <= 1.0:
                    raise ValueError(f"{f}: n must be >= 1 and the fraction in [0, 1], got [{n}, {frac}]")
            setattr(self, f, pairs)

    def process(self, doc: Document) -> Document | Removed:
        text = doc.text
        if not text.strip():
            return Removed("gopher_empty")
        paras = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
        n_dup, dup_chars = _duplicates(paras)
        if self.max_dup_para_frac is not None and n_dup / len(paras) > self.max_dup_para_frac:
            return Removed("gopher_dup_para_frac")
        if self.max_dup_para_char_frac is not None and dup_chars / len(text) > self.max_dup_para_char_frac:
            return Removed("gopher_dup_para_char_frac")
        lines = non_empty_lines(text)
        n_dup, dup_chars = _duplicates(lines)
        if self.max_dup_line_frac is not None and n_dup / len(lines) > self.max_dup_line_frac:
            return Removed("gopher_dup_line_frac")
        if self.max_dup_line_char_frac is not None and dup_chars / len(text) > self.max_dup_line_char_frac:
            return Removed("gopher_dup_line_char_frac")
        words = split_words(text)
        lengths = [len(w) for w in words]
        total = sum(lengths)
        if total == 0:
            return doc
        for n, frac in self.top_ngrams:
            if _top_ngram_char_frac(words, lengths, n, total) > frac:
                return Removed(f"gopher_top_{n}_gram")
        for n, frac in self.dup_ngrams:
            if _dup_ngram_char_frac(words, lengths, n, total) > frac:
                return Removed(f"gopher_dup_{n}_gram")
        return doc


# ---- C4 ----

_C4_END = (".", "?", "!", '"', "。", "？", "！", "”", "」", "』")  # C4: . ? ! " (plus Chinese equivalents)
_C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"[.!?。！？]+")


@register
@dataclass
class C4Quality(Stage):
    """C4's cleaning rules (Raffel et al. 2020, §2.2), in the order of the reference implementation (TFDS c4_utils).

    Line rules drop lines and keep the document (returned with the surviving lines); "lorem ipsum" or a curly
    bracket in a surviving line, or too few sentences, drops the whole document. Sentences are counted by
    sentence-final punctuation runs (at least one per kept line).
    """

    name = "c4_quality"
    remove_citations: bool = True  # Wikipedia-style [1], [edit], [citation needed]
    require_terminal_punct: bool = True  # C4: keep lines ending in . ? ! "
    min_words_per_line: int | None = 3  # C4: keep lines with at least 3 words
    max_word_length: int | None = 1000  # C4 code: drop lines with a word longer than 1000 characters
    min_sentences: int | None = 5  # C4: drop pages with fewer than 5 sentences
    filter_lorem_ipsum: bool = True  # C4: drop pages with "lorem ipsum"
    filter_javascript: bool = True  # C4: drop lines mentioning javascript
    filter_curly_bracket: bool = True  # C4: drop pages with a curly bracket
    filter_policy: bool = True  # C4 code: drop lines about terms of use / cookies

    def __post_init__(self):
        check_min("min_words_per_line", self.min_words_per_line)
        check_min("max_word_length", self.max_word_length, 1)
        check_min("min_sentences", self.min_sentences)

    def process(self, doc: Document) -> Document | Removed:
        kept: list[str] = []
        sentences = 0
        for line in doc.text.splitlines():
            line = line.strip()
            if self.max_word_length is not None and any(len(w) > self.max_word_length for w in line.split()):
                continue
            if self.remove_citations:
                line = _CITATION_RE.sub("", line)
            if self.require_terminal_punct and (not line.endswith(_C4_END) or line.endswith(("...", "…"))):
                continue
            if self.min_words_per_line is not None and len(split_words(line)) < self.min_words_per_line:
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return Removed("c4_lorem_ipsum")
            if self.filter_javascript and "javascript" in lower:
                continue
            if self.filter_curly_bracket and "{" in line:
                return Removed("c4_curly_bracket")
            if self.filter_policy and any(p in lower for p in _C4_POLICY):
                continue
            if not line:
                continue
            kept.append(line)
            sentences += max(1, len(_SENTENCE_END_RE.findall(line)))
        if self.min_sentences is not None and sentences < self.min_sentences:
            return Removed("c4_min_sentences")
        if not kept:
            return Removed("c4_empty")
        doc.text = "\n".join(kept)
        return doc


# ---- FineWeb ----

_FINEWEB_END = (".", "'", '"', "!", "?", "。", "？", "！", "”", "」", "』")


@register
@dataclass
class FineWebQuality(Stage):
    """FineWeb's custom rules (Penedo et al. 2024, §3.6) over non-empty lines.

    Drops when: lines ending in punctuation <= line_punct_thr; lines of <= short_line_length characters >=
    short_line_thr; characters in duplicated lines / all non-newline characters >= char_dup_ratio; line breaks per
    word > new_line_ratio (datatrove's list-page rule).
    """

    name = "fineweb_quality"
    line_punct_thr: float | None = 0.12  # FineWeb: fraction of lines ending with punctuation <= 0.12
    line_punct_exclude_zero: bool = False  # keep documents with no such line at all (datatrove option)
    short_line_thr: float | None = 0.67  # FineWeb: fraction of lines shorter than 30 characters >= 0.67
    short_line_length: int = 30
    char_dup_ratio: float | None = 0.1  # FineWeb paper: >= 0.1 (datatrove's code default is 0.01)
    new_line_ratio: float | None = 0.3  # datatrove FineWebQualityFilter: newlines / words > 0.3

    def __post_init__(self):
        for f in ("line_punct_thr", "short_line_thr", "char_dup_ratio"):
            check_ratio(f, getattr(self, f))
        check_min("short_line_length", self.short_line_length, 1)
        check_min("new_line_ratio", self.new_line_ratio)

    def process(self, doc: Document) -> Document | Removed:
        lines = non_empty_lines(doc.text)
        if not lines:
            return Removed("fineweb_empty")
        if self.line_punct_thr is not None:
            ratio = sum(s.endswith(_FINEWEB_END) for s in lines) / len(lines)
            if ratio <= self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
                return Removed("fineweb_line_punct_ratio")
        if self.short_line_thr is not None:
            if sum(len(s) <= self.short_line_length for s in lines) / len(lines) >= self.short_line_thr:
                return Removed("fineweb_short_line_ratio")
        if self.char_dup_ratio is not None:
            if _duplicates(lines)[1] / len(doc.text.replace("\n", "")) >= self.char_dup_ratio:
                return Removed("fineweb_char_dup_ratio")
        if self.new_line_ratio is not None:
            n_words = len(split_words(doc.text))
            if n_words == 0 or (len(lines) - 1) / n_words > self.new_line_ratio:
                return Removed("fineweb_list_ratio")
        return doc


# ---- length and character distribution ----


@register
@dataclass
class Length(Stage):
    """Bounds on characters and words (`split_words`: a CJK character is a word); None turns a bound off."""

    name = "length"
    min_chars: int | None = None
    max_chars: int | None = None
    min_words: int | None = 50  # Gopher: 50 to 100,000 words
    max_words: int | None = 100_000

    def __post_init__(self):
        for f in ("min_chars", "max_chars", "min_words", "max_words"):
            check_min(f, getattr(self, f))
        check_order("min_chars", self.min_chars, "max_chars", self.max_chars)
        check_order("min_words", self.min_words, "max_words", self.max_words)

    def process(self, doc: Document) -> Document | Removed:
        n = len(doc.text)
        if self.min_chars is not None and n < self.min_chars:
            return Removed("length_min_chars")
        if self.max_chars is not None and n > self.max_chars:
            return Removed("length_max_chars")
        if self.min_words is not None or self.max_words is not None:
            n = len(split_words(doc.text))
            if self.min_words is not None and n < self.min_words:
                return Removed("length_min_words")
            if self.max_words is not None and n > self.max_words:
                return Removed("length_max_words")
        return doc


def _is_abnormal(c: str) -> bool:
    """U+FFFD (a decoding error), unassigned, private-use, surrogate, and control characters other than \\t \\n \\r."""
    cat = unicodedata.category(c)
    return c == "\ufffd" or cat in ("Cn", "Co", "Cs") or (cat == "Cc" and c not in "\t\n\r")


@register
@dataclass
class CharDistribution(Stage):
    """Ratios over non-whitespace characters: abnormal characters, punctuation and symbols (Unicode P* and S*), digits.

    Meant for prose: code has far more punctuation. Only the punctuation bound has a published counterpart.
    """

    name = "char_distribution"
    max_abnormal_ratio: float | None = 0.01  # project default: any real share of U+FFFD etc. means broken decoding
    max_punct_ratio: float | None = 0.25  # after Data-Juicer's special_characters_filter (max_ratio 0.25)
    max_digit_ratio: float | None = 0.3  # project default (tables of numbers, logs)

    def __post_init__(self):
        for f in ("max_abnormal_ratio", "max_punct_ratio", "max_digit_ratio"):
            check_ratio(f, getattr(self, f))

    def process(self, doc: Document) -> Document | Removed:
        chars = [c for c in doc.text if not c.isspace()]
        if not chars:
            return Removed("char_empty")
        n = len(chars)
        if self.max_abnormal_ratio is not None and sum(map(_is_abnormal, chars)) / n > self.max_abnormal_ratio:
            return Removed("char_abnormal_ratio")
        if self.max_punct_ratio is not None:
            punct = sum(unicodedata.category(c)[0] in "PS" for c in chars)
            if punct / n > self.max_punct_ratio:
                return Removed("char_punct_ratio")
        if self.max_digit_ratio is not None and sum(c.isdigit() for c in chars) / n > self.max_digit_ratio:
            return Removed("char_digit_ratio")
        return doc

