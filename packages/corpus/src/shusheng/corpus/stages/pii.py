"""PII redaction: e-mail addresses, IP addresses, phone numbers, Chinese resident ID numbers, and secrets.

Matches are replaced by placeholders and counted in metadata["pii"] ({kind: count}, only kinds found). Kinds and
what they match, applied in this order (secrets first, so a key block is one <SECRET>):
    secret  PEM private key blocks; AWS access key ids (AKIA/ASIA + 16); "sk-" API keys (OpenAI, Anthropic style);
            GitHub tokens (ghp_, gho_, ...); and values after a key/token/secret/password name (`api_key = "..."`,
            `"auth_token": "..."`, `Bearer ...`) that look random: at least 16 characters with a letter and a digit,
            Shannon entropy >= min_entropy bits per character, and not a lower-case dotted/snake identifier. Only
            the value is replaced: `api_key=<SECRET>`.
    email   local@domain.tld, ASCII (an address next to Chinese text is found without spaces).
    ip      IPv4 and IPv6, checked with `ipaddress`; only public addresses unless redact_private_ips (FineWeb
            anonymizes public IPs; 127.0.0.1 and 192.168.x.x in tutorials and code are not personal).
    id      Chinese resident identity numbers: 18 characters, a plausible birth date, and the ISO 7064 MOD 11-2
            check character (GB 11643-1999) valid.
    phone   Chinese mobile numbers (1[3-9]x xxxx xxxx, optional +86), Chinese landlines (0xx-xxxxxxxx),
            international numbers written with "+" and 7-15 digits, and North American (xxx) xxx-xxxx.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass

from ..document import Document
from .base import Stage, register
from .rules import check_min

PLACEHOLDERS = {"secret": "<SECRET>", "email": "<EMAIL>", "ip": "<IP>", "id": "<ID>", "phone": "<PHONE>"}

_SECRET_TOKEN_RE = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----"
    r"|(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"
    r"|(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}"
    r"|(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,}(?![A-Za-z0-9])")
_SECRET_VALUE_CHARS = r"A-Za-z0-9+/=_.~-"
_SECRET_ASSIGN_RE = re.compile(
    rf"(?i)(\b[\w.-]*(?:key|token|secret|passw(?:or)?d|pwd|credentials?)[\"']?\s*[:=]\s*[\"']?|\bbearer\s+)"
    rf"([{_SECRET_VALUE_CHARS}]{{16,}})(?![{_SECRET_VALUE_CHARS}])")
_IDENTIFIER_RE = re.compile(r"[a-z][a-z0-9]*(?:[._][a-z0-9]+)+")
_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![A-Za-z0-9-])")
_IPV4_RE = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?!\.?[0-9])")
_IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_CN_ID_RE = re.compile(
    r"(?<![0-9A-Za-z])[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx]"
    r"(?![0-9A-Za-z])")
_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_PHONE_RE = re.compile(
    r"(?<![0-9A-Za-z+])(?:(?:\+|00)86[ -]?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}(?![0-9])"  # Chinese mobile
    r"|(?<![0-9A-Za-z+-])0[1-9][0-9]{1,2}-[0-9]{7,8}(?![0-9])"  # Chinese landline with area code
    r"|(?<![0-9A-Za-z+])\+[1-9][0-9]{0,2}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?(?:[0-9][ .-]?){5,13}[0-9](?![0-9])"  # +CC
    r"|(?<![0-9A-Za-z.+-])(?:\([0-9]{3}\) ?|[0-9]{3}[.-])[0-9]{3}[.-][0-9]{4}(?![0-9]|[.-][0-9])")  # (415) 555-2671


def shannon_entropy(s: str) -> float:
    """Bits per character of the character distribution of `s`."""
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values()) if n else 0.0


def valid_cn_id(s: str) -> bool:
    """The ISO 7064 MOD 11-2 check character of an 18-character Chinese resident ID (GB 11643-1999)."""
    total = sum(int(d) * w for d, w in zip(s[:17], _CN_ID_WEIGHTS, strict=True))
    return "10X98765432"[total % 11] == s[17].upper()


def _phone_digits_ok(s: str) -> bool:
    return 7 <= sum(c.isdigit() for c in s) <= 15


@register
@dataclass
class PiiRedact(Stage):
    """Replace PII with placeholders (<EMAIL>, <IP>, <PHONE>, <ID>, <SECRET>); counts in metadata["pii"]."""

    name = "pii_redact"
    kinds: tuple[str, ...] = ("secret", "email", "ip", "id", "phone")
    redact_private_ips: bool = False  # FineWeb anonymizes public IP addresses only
    min_entropy: float = 3.0  # bits per character for generic key=/token= values (detect-secrets' hex limit)

    def __post_init__(self):
        if isinstance(self.kinds, str):
            raise ValueError(f"kinds must be a list, got the string {self.kinds!r}")
        self.kinds = tuple(self.kinds)
        unknown = sorted(set(self.kinds) - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(f"kinds has unknown value(s) {unknown}; known: {list(PLACEHOLDERS)}")
        check_min("min_entropy", self.min_entropy)

    # Each redactor returns (new text, number of replacements).

    def _secret(self, text: str) -> tuple[str, int]:
        text, n = _SECRET_TOKEN_RE.subn(PLACEHOLDERS["secret"], text)
        count = 0

        def value(m: re.Match) -> str:
            nonlocal count
            v = m.group(2)
            random_looking = (any(c.isdigit() for c in v) and any(c.isalpha() for c in v)
                              and not _IDENTIFIER_RE.fullmatch(v) and shannon_entropy(v) >= self.min_entropy)
            if not random_looking:
                return m.group()
            count += 1
            return m.group(1) + PLACEHOLDERS["secret"]

        text = _SECRET_ASSIGN_RE.sub(value, text)
        return text, n + count

    @staticmethod
    def _email(text: str) -> tuple[str, int]:
        return _EMAIL_RE.subn(PLACEHOLDERS["email"], text)

    def _ip(self, text: str) -> tuple[str, int]:
        count = 0

        def replace(m: re.Match) -> str:
            nonlocal count
            try:
                addr = ipaddress.ip_address(m.group())
            except ValueError:
                return m.group()
            if not (addr.is_global or self.redact_private_ips):
                return m.group()
            count += 1
            return PLACEHOLDERS["ip"]

        text = _IPV6_RE.sub(replace, _IPV4_RE.sub(replace, text))
        return text, count

    @staticmethod
    def _id(text: str) -> tuple[str, int]:
        count = 0

        def replace(m: re.Match) -> str:
            nonlocal count
            if not valid_cn_id(m.group()):
                return m.group()
            count += 1
            return PLACEHOLDERS["id"]

        return _CN_ID_RE.sub(replace, text), count

    @staticmethod
    def _phone(text: str) -> tuple[str, int]:
        count = 0

        def replace(m: re.Match) -> str:
            nonlocal count
            if not _phone_digits_ok(m.group()):
                return m.group()
            count += 1
            return PLACEHOLDERS["phone"]

        return _PHONE_RE.sub(replace, text), count

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """The redacted text and {kind: replacements} for the kinds found."""
        counts: dict[str, int] = {}
        for kind in PLACEHOLDERS:  # fixed order: secrets, e-mail, IP, ID, phone
            if kind in self.kinds:
                text, n = getattr(self, f"_{kind}")(text)
                if n:
                    counts[kind] = n
        return text, counts

    def process(self, doc: Document) -> Document:
        doc.text, doc.metadata["pii"] = self.redact(doc.text)
        return doc
