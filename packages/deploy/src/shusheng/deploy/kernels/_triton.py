"""Triton when it is installed. The kernel modules import it from here, so they import without it too: on a
CPU-only torch their `@triton.jit` kernels are plain functions that are never launched, and the PyTorch references
beside them still work."""

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
