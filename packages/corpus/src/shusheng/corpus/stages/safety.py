"""Safety filters: a URL domain blocklist, a word blocklist, and a hook for a user classifier.

Blocklist files are UTF-8 text, one entry a line; blank lines and lines starting with "#" are ignored. Entries may
also be given inline (`domains`, `words`), which is handy for short lists and tests. Files are read in `setup()`
(once per worker), or on the first document.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..document import Document, Removed
from .base import Stage, register
from .rules import check_min, check_order


def read_list(path: str | Path) -> list[str]:
    """The entries of a list file: stripped lines, without blanks and "#" comments."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file {path} does not exist")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def load_object(spec: str, option: str) -> Any:
    """The object named by "package.module:attribute" (attribute may be dotted). Errors name `option`."""
    module_name, sep, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not module_name or not attr:
        raise ValueError(f"{option} must look like 'package.module:function', got {spec!r}")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{option}: cannot import module {module_name!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{option}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_callable(spec: str, option: str) -> Callable[..., Any]:
    """Like `load_object`, for a function."""
    obj = load_object(spec, option)
    if not callable(obj):
        raise ValueError(f"{option}: {spec!r} is not callable")
    return obj


def url_host(url: str) -> str:
    """Lower-case host of a URL or bare domain ("https://WWW.Example.com:80/x" -> "www.example.com"); "" if none."""
    url = url.strip().lower()
    if "://" not in url:
        url = "//" + url.removeprefix("*.").lstrip(".")
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return ""
    return host.rstrip(".")


@register
@dataclass
class UrlBlocklist(Stage):
    """Drop documents whose metadata[url_key] host is a listed domain or a subdomain of one ("url_blocklist").

    Listing "example.com" blocks example.com, www.example.com and a.b.example.com, not notexample.com. Documents
    without a URL are kept unless drop_missing_url.
    """

    name = "url_blocklist"
    path: str | None = None  # file of domains (or URLs), one a line
    domains: tuple[str, ...] = ()
    url_key: str = "url"
    drop_missing_url: bool = False

    def __post_init__(self):
        if isinstance(self.domains, str):
            raise ValueError(f"domains must be a list of domains, got the string {self.domains!r}")
        self.domains = tuple(self.domains)
        if self.path is None and not self.domains:
            raise ValueError("url_blocklist needs `path` (a domain list file) or `domains`")
        self._blocked: frozenset[str] | None = None

    def setup(self) -> None:
        if self._blocked is None:
            entries = [*self.domains, *(read_list(self.path) if self.path is not None else [])]
            self._blocked = frozenset(h for h in map(url_host, entries) if h)

    def process(self, doc: Document) -> Document | Removed:
        self.setup()
        url = doc.metadata.get(self.url_key)
        host = url_host(url) if isinstance(url, str) else ""
        if not host:
            return Removed("url_missing") if self.drop_missing_url else doc
        parts = host.split(".")
        if any(".".join(parts[i:]) in self._blocked for i in range(len(parts))):
            return Removed("url_blocklist")
        return doc


_CJK_CHAR_RE = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD_CHARS = "a-z0-9_\u00c0-\u024f"


def blocklist_regex(words: list[str]) -> re.Pattern:
    """One case-insensitive regex for all entries: whole-word matches for words of spaced scripts, substring matches
    for entries with CJK characters (as C4's badwords filter does for zh/ja), longest entries first."""
    parts = []
    for w in sorted(set(words), key=len, reverse=True):
        escaped = re.escape(w)
        if _CJK_CHAR_RE.search(w):
            parts.append(escaped)
        else:
            parts.append(f"(?<![{_LATIN_WORD_CHARS}]){escaped}(?![{_LATIN_WORD_CHARS}])")
    return re.compile("|".join(parts), re.IGNORECASE)


@register
@dataclass
class WordBlocklist(Stage):
    """Drop documents with at least `min_hits` occurrences of listed words or phrases ("word_blocklist").

    Latin-script entries match whole words, case-insensitively ("ass" does not match "class"); entries containing CJK
    characters match anywhere. C4 drops a page at its first listed word (min_hits = 1).
    """

    name = "word_blocklist"
    path: str | None = None  # file of words / phrases, one a line
    words: tuple[str, ...] = ()
    min_hits: int = 1  # C4: any listed word removes the page

    def __post_init__(self):
        if isinstance(self.words, str):
            raise ValueError(f"words must be a list of words, got the string {self.words!r}")
        self.words = tuple(self.words)
        if self.path is None and not self.words:
            raise ValueError("word_blocklist needs `path` (a word list file) or `words`")
        check_min("min_hits", self.min_hits, 1)
        self._regex: re.Pattern | None = None

    def setup(self) -> None:
        if self._regex is None:
            entries = [*self.words, *(read_list(self.path) if self.path is not None else [])]
            entries = [w for w in entries if w.strip()]
            if not entries:
                raise ValueError(f"word_blocklist: the list {self.path} has no entries")
            self._regex = blocklist_regex(entries)

    def count(self, text: str) -> int:
        self.setup()
        return sum(1 for _ in self._regex.finditer(text))

    def process(self, doc: Document) -> Document | Removed:
        if self.count(doc.text) >= self.min_hits:
            return Removed("word_blocklist")
        return doc


@register
@dataclass
class Classifier(Stage):
    """Score each document with a user function `fn(text) -> float` named "package.module:function".

    The score goes to metadata[metadata_key]; documents below min_score ("classifier_min_score") or above max_score
    ("classifier_max_score") are dropped. Use min_score for quality-like scores, max_score for toxicity-like ones.
    """

    name = "classifier"
    function: str = ""
    min_score: float | None = None
    max_score: float | None = None
    metadata_key: str = "classifier_score"

    def __post_init__(self):
        if not self.function or ":" not in self.function:
            raise ValueError(f"function must look like 'package.module:function', got {self.function!r}")
        if self.min_score is None and self.max_score is None:
            raise ValueError("set min_score and/or max_score (the classifier would drop nothing)")
        check_order("min_score", self.min_score, "max_score", self.max_score)
        self._fn: Callable[[str], float] | None = None

    def setup(self) -> None:
        if self._fn is None:
            self._fn = load_callable(self.function, "function")

    def process(self, doc: Document) -> Document | Removed:
        self.setup()
        score = float(self._fn(doc.text))
        doc.metadata[self.metadata_key] = score
        if self.min_score is not None and score < self.min_score:
            return Removed("classifier_min_score")
        if self.max_score is not None and score > self.max_score:
            return Removed("classifier_max_score")
        return doc
