"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) over the engine."""

from .app import build_app

__all__ = ["build_app"]
