"""The unit of data: a `Document` with an id, its text, where it came from, and free-form metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Document:
    id: str
    text: str
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], text_key: str = "text", id_key: str = "id", source: str = "") -> Document:
        if text_key not in d:
            raise ValueError(f"record has no {text_key!r} field (fields: {sorted(d)}); set text_key")
        meta = {k: v for k, v in d.items() if k not in (text_key, id_key, "source", "metadata")}
        meta.update(d.get("metadata") or {})
        return cls(id=str(d.get(id_key, "")), text=str(d[text_key]), source=str(d.get("source", source)),
                   metadata=meta)


@dataclass(frozen=True)
class Removed:
    """What a stage returns instead of a document it drops: the reason, kept in the removed-documents file."""

    reason: str
