"""Stages: small named, configurable units applied to one document at a time, each with its own stats.

A stage is a dataclass (its fields are its configuration, checked in `__post_init__`) with `process(doc)`, which
returns the document (possibly changed) or `Removed(reason)`. Stages register under a name so pipelines can be
written as YAML: `{"stage": "gopher_quality", "min_words": 50}`. Whole-corpus steps (deduplication) are not stages;
they run between stage passes (see `pipeline.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..document import Document, Removed

STAGES: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available by its `name` in pipeline configs."""
    if not cls.name or cls.name in STAGES:
        raise ValueError(f"stage name {cls.name!r} is empty or already registered")
    STAGES[cls.name] = cls
    return cls


@dataclass
class Stage:
    name: ClassVar[str] = ""

    def process(self, doc: Document) -> Document | Removed:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self) -> None:
        """Load models or files once per worker process, before the first document (override when needed)."""


def build_stage(spec: dict[str, Any]) -> Stage:
    """A stage from a config dict: {"stage": NAME, **fields}. Errors name the stage and the bad field."""
    spec = dict(spec)
    name = spec.pop("stage", None)
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known stages: {', '.join(sorted(STAGES))}")
    cls = STAGES[name]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"stage {name!r} has no option(s) {unknown}; its options: {sorted(known)}")
    try:
        return cls(**spec)
    except (TypeError, ValueError) as e:
        raise ValueError(f"stage {name!r}: {e}") from None
