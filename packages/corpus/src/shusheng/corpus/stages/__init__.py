"""Document stages, registered by name for pipeline configs (see `base.py`)."""

from . import decontam, language, normalize, perplexity, pii, quality, rules, safety  # noqa: F401  (registers)
from .base import STAGES, Stage, build_stage, register

__all__ = ["STAGES", "Stage", "build_stage", "register"]
