"""Model FLOPs per token and the card's dense bf16 peak, for MFU.

FLOPs per trained token = 6 * N + 12 * L * H * T (N parameters, L layers, H hidden size, T sequence length):
forward + backward of every matmul, plus the attention score and value products counted over the full T x T
square, as PaLM's appendix B, torchtitan and the H100 baseline in `shared/notes` count them. Activation
recomputation is not counted (it is overhead, not model FLOPs).
"""

from __future__ import annotations

import torch

from ..config import ModelConfig

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, matched against torch.cuda.get_device_name().
PEAK_BF16 = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / HBM3
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
)


def flops_per_token(cfg: ModelConfig, seq_len: int, num_params: int | None = None) -> float:
    """Training FLOPs per token (forward + backward), see the module docstring.

    Args:
        num_params: the trained parameter count for N; default `cfg.num_params`.
    """
    n = cfg.num_params if num_params is None else num_params
    return 6.0 * n + 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len


def peak_flops(device: torch.device | str | None = None) -> tuple[str, float | None]:
    """(device name, dense bf16 peak FLOP/s), or (name, None) for a device without a known peak (CPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16:
        if key in name:
            return name, peak
    return name, None


def mfu(tokens_per_second_per_device: float, flops_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilization in [0, 1], or None without a known peak."""
    return None if not peak else tokens_per_second_per_device * flops_token / peak
