"""QLoRA's base model: the blocks' linear layers in bitsandbytes 4-bit NormalFloat (NF4) with double quantization.

`quantize_` swaps each target `nn.Linear` of every block for a `bitsandbytes.nn.Linear4bit` (a module swap, not a
flag in the model), one block at a time: the block's weights are quantized as they move to the device, so the device
never holds more than one block in 16 bits. Embeddings, norms and the output head stay in the base dtype, as in the
QLoRA paper (Dettmers et al. 2023); LoRA then goes on top (`lora.add_lora`). bitsandbytes runs 4-bit layers on CUDA
and, since 0.46, on CPU (0.45 leaves the weights unquantized there).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import QuantArgs


def _bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ValueError("QLoRA needs bitsandbytes: pip install 'bitsandbytes>=0.46'") from e
    return bnb


def quantize_(model: nn.Module, targets: list[str], args: QuantArgs, compute_dtype: torch.dtype,
              device: torch.device | str) -> nn.Module:
    """Replaces the target linears of every block by 4-bit ones and moves the model to `device` (in place).

    Args:
        model: a `Transformer` whose weights are on the CPU (or already on `device`), in 16 or 32 bits.
        targets: module names inside a block (`wqkv`, `wo`, `w1`, `w2`, `w3`).
        args: quantization type and double quantization.
        compute_dtype: the dtype the 4-bit layers dequantize to for their matmuls (bf16 on GPU).
        device: where the model goes.

    Returns:
        The same model, with `model.quantized = True`.
    """
    bnb = _bnb()
    for block in model.layers:
        for name, module in list(block.named_modules()):
            if name.rpartition(".")[2] not in targets or not isinstance(module, nn.Linear):
                continue
            q = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=args.double_quant,
                                  quant_type=args.quant_type, device="meta")
            q.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False,
                                         compress_statistics=args.double_quant, quant_type=args.quant_type)
            # On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight in place for inference the first time
            # it runs in eval mode without grad (our evaluation); that layout has no backward pass and needs
            # out_features % 32 == 0, so training after an evaluation would break. Keep the trainable layout.
            q.support_avx512bf16_for_cpu = False
            if module.bias is not None:
                q.bias = nn.Parameter(module.bias.data, requires_grad=False)
            parent, _, attr = name.rpartition(".")
            setattr(block.get_submodule(parent), attr, q)
        block.to(device)  # Params4bit quantizes when it moves
    model.to(device)
    model.quantized = True
    return model


def paged_optimizer(name: str, param_groups: list[dict], lr: float, betas: tuple[float, float], eps: float):
    """bitsandbytes' paged AdamW (32-bit or 8-bit states): optimizer states page to host memory under pressure.

    Raises:
        ValueError: no CUDA device (paged memory is CUDA unified memory).
    """
    if not torch.cuda.is_available():
        raise ValueError(f"optim.name={name} needs a CUDA device (paged optimizers use CUDA unified memory); "
                           "use optim.name=adamw on CPU")
    bnb = _bnb()
    cls = {"paged_adamw": bnb.optim.PagedAdamW, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[name]
    return cls(param_groups, lr=lr, betas=tuple(betas), eps=eps)
