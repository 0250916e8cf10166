"""Triton when it is installed. The kernel modules import it from here, so they import without it too: on a
CPU-only torch their `@triton.jit` kernels are plain functions that are never launched, and the PyTorch references
beside them still work."""

import functools
import os

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

try:  # grid dependency control (Hopper's programmatic dependent launch), triton >= 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    HAS_PDL = True
except ImportError:
    HAS_PDL = False
    gdc_launch_dependents = gdc_wait = None


DEFAULT_NUM_SMS = 132  # H100 SXM; used on CPU / under the interpreter


@functools.lru_cache
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (DEFAULT_NUM_SMS off CUDA), looked up once: launch sizing reads it
    every step."""
    if device.type != "cuda":
        return DEFAULT_NUM_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


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


_pdl_forced: bool | None = None
_PDL_DEFAULT = os.environ.get("SHUSHENG_PDL", "1") != "0"
_pdl_capable: dict[torch.device, bool] = {}


def set_pdl(enabled: bool | None) -> None:
    """Force programmatic dependent launch on (where the GPU has it) or off; None restores the default (on, unless
    SHUSHENG_PDL=0). Kernels already captured in a CUDA graph keep the launch mode they were captured with."""
    global _pdl_forced
    _pdl_forced = enabled


def use_pdl(device: torch.device) -> bool:
    """Whether the decode kernels on `device` launch with programmatic dependent launch: each kernel's programs
    start while the previous kernel finishes and wait for it at their start (`pdl_enter`), so the launch and the
    programs' set-up overlap the previous kernel's tail. Needs a Hopper or newer GPU, a real launch (not Triton's
    interpreter) and triton's grid dependency control. Called at every launch: a dict lookup once decided."""
    capable = _pdl_capable.get(device)
    if capable is None:
        capable = _pdl_capable[device] = (device.type == "cuda" and HAS_PDL and os.environ.get("TRITON_INTERPRET")
                                          != "1" and torch.cuda.get_device_capability(device)[0] >= 9)
    return capable and (_PDL_DEFAULT if _pdl_forced is None else _pdl_forced)


def pdl_args(device: torch.device) -> dict:
    """A decode kernel's PDL arguments on `device` (`use_pdl`): its `PDL` constexpr (for `pdl_enter`) and, when on,
    the `launch_pdl` launch keyword (the interpreter takes none)."""
    pdl = use_pdl(device)
    return {"PDL": True, "launch_pdl": True} if pdl else {"PDL": False}


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    """Under programmatic dependent launch: wait until the previous kernel has finished and its writes are visible,
    then let the next kernel's programs start (they wait here in turn, so a kernel never starts before the one two
    back has finished). Every program of a kernel launched with PDL must pass here before it reads anything an
    earlier kernel may still be writing, and before it writes anything."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
