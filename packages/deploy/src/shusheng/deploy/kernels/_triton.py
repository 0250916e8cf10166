"""Triton when it is installed. The kernel modules import it from here, so they import without it too: on a
CPU-only torch their `@triton.jit` kernels are plain functions that are never launched, and the PyTorch references
beside them still work."""

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:
    from types import SimpleNamespace

    HAS_TRITON = False
    triton = SimpleNamespace(jit=lambda fn=None, **_: fn if fn is not None else (lambda f: f))
    tl = SimpleNamespace(constexpr=None)


def require_triton(name: str) -> None:
    """Raise a clear error when the Triton kernel `name` is called on a machine without triton."""
    if not HAS_TRITON:
        raise RuntimeError(f"{name} needs triton; use {name}_ref on machines without it")


_kept: dict[tuple, torch.Tensor] = {}


def kept_buffer(name: str, device: torch.device, numel: int, dtype: torch.dtype, zero: bool = False) -> torch.Tensor:
    """A scratch buffer of the kernel `name` (split-K partials, arrival counters), allocated once per device, size
    and dtype and kept for good: a captured CUDA graph holds its address. Kernels on one stream never overlap, so
    every launch of that size may use it; a `zero` buffer (counters) must be left zero by each kernel."""
    key = (name, device, numel, dtype)
    if key not in _kept:
        _kept[key] = (torch.zeros if zero else torch.empty)(numel, dtype=dtype, device=device)
    return _kept[key]
