"""Text normalization: mojibake repair (optional), Unicode normal form, line breaks, spaces, invisible characters.

Steps, in order:
    1. fix_mojibake (off by default): UTF-8 text that was decoded as Windows-1252 / Latin-1 ("cafÃ©", "â€™",
       "ä¸­æ–‡") is re-encoded and decoded back, one UTF-8 character at a time; sequences that do not decode are left.
       Off by default because a rare legitimate pair (a capital "Ä" directly followed by "–") decodes too.
    2. Unicode normal form: NFC (default) composes characters without changing their meaning; NFKC also folds
       compatibility forms, which turns Chinese full-width punctuation ("，", "！", "（") into ASCII.
    3. Line breaks: \\r\\n, \\r, \\v, \\f, U+0085, U+2028, U+2029 become \\n. Runs of newlines are kept.
    4. Spaces: no-break, ideographic (U+3000) and other Unicode spaces become " "; zero-width space, word joiner,
       BOM and soft hyphen are removed; other control characters except \\n and \\t are removed.
    5. Trailing spaces of each line are removed, leading blank lines and trailing whitespace of the document too.
       With collapse_spaces, runs of spaces/tabs inside a line become one space (indentation is kept).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from ..document import Document, Removed
from .base import Stage, register

_NEWLINES_RE = re.compile("\r\n|[\r\v\f\x85\u2028\u2029]")
_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_INVISIBLE = "\u200b\u2060\ufeff\u00ad"
# Delete every control character except \t and \n; map the Unicode spaces to " " and drop invisible characters.
_TABLE = {i: None for i in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if chr(i) not in "\t\n"}
_TABLE.update({ord(c): " " for c in _SPACES})
_TABLE.update({ord(c): None for c in _INVISIBLE})
_TRAILING_RE = re.compile(r"[ \t]+(?=\n|$)")
_INNER_RUN_RE = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")


def _mojibake_tables() -> tuple[dict[str, int], re.Pattern]:
    """The byte each character stands for when UTF-8 was read as Windows-1252 (Latin-1 for its 5 holes), and a regex
    for one misread UTF-8 character: a lead byte followed by the right number of continuation bytes."""
    byte_of: dict[str, int] = {}
    for b in range(0x80, 0x100):
        try:
            byte_of[bytes([b]).decode("cp1252")] = b
        except UnicodeDecodeError:
            byte_of[chr(b)] = b
    cont = re.escape("".join(c for c, b in byte_of.items() if 0x80 <= b <= 0xBF))
    pattern = re.compile(f"[\u00c2-\u00df][{cont}]|[\u00e0-\u00ef][{cont}]{{2}}|[\u00f0-\u00f4][{cont}]{{3}}")
    return byte_of, pattern


_MOJIBAKE_BYTES, _MOJIBAKE_RE = _mojibake_tables()


def _unmojibake(m: re.Match) -> str:
    try:
        return bytes(_MOJIBAKE_BYTES[c] for c in m.group()).decode("utf-8")
    except UnicodeDecodeError:
        return m.group()


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 read as Windows-1252 / Latin-1: "cafÃ©" -> "café", "ä¸­æ–‡" -> "中文"."""
    return _MOJIBAKE_RE.sub(_unmojibake, text)


def normalize_text(text: str, form: str | None = "NFC", fix_mojibake_: bool = False,
                   collapse_spaces: bool = False) -> str:
    """The normalized text (steps in the module docstring)."""
    if fix_mojibake_:
        text = fix_mojibake(text)
    if form:
        text = unicodedata.normalize(form, text)
    text = _NEWLINES_RE.sub("\n", text).translate(_TABLE)
    text = _TRAILING_RE.sub("", text)
    if collapse_spaces:
        text = _INNER_RUN_RE.sub(" ", text)
    return text.lstrip("\n").rstrip()


@register
@dataclass
class Normalize(Stage):
    """Normalize text in place (see the module docstring); a document left empty is dropped ("normalize_empty")."""

    name = "normalize"
    form: str | None = "NFC"  # "NFC", "NFKC", or None to keep the code points
    fix_mojibake: bool = False
    collapse_spaces: bool = False  # off: runs of spaces can be meaningful in code and tables
    drop_empty: bool = True

    def __post_init__(self):
        if self.form not in ("NFC", "NFKC", None):
            raise ValueError(f"form must be 'NFC', 'NFKC' or None, got {self.form!r}")

    def process(self, doc: Document) -> Document | Removed:
        doc.text = normalize_text(doc.text, self.form, self.fix_mojibake, self.collapse_spaces)
        if self.drop_empty and not doc.text:
            return Removed("normalize_empty")
        return doc
