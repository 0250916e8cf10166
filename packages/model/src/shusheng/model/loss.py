"""Fused output projection + cross-entropy, computed in chunks of tokens, never holding the full logits.

A 92,544-token vocabulary makes the (tokens x vocab) logits the largest activation of a training step (4 x 4096
tokens: 6 GB in fp32). `linear_cross_entropy` computes, chunk by chunk, the logits, the loss and both gradients
(with respect to the hidden states and the output weight) during forward, keeping only the gradients; backward just
scales them. Same FLOPs as the unfused head, no recomputation, memory O(chunk x vocab). The idea is Liger-Kernel's
fused linear cross-entropy, written here in plain PyTorch matmuls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, labels: Tensor, chunk: int) -> Tensor:
        # h (N, D), weight (V, D), labels (N,) -> summed loss over labels != IGNORE_INDEX (fp32 scalar)
        # a frozen head (LoRA, QLoRA, reward models) needs no weight gradient: skip its buffer and matmul
        need_h, need_w = h.requires_grad, weight.requires_grad
        need_grad = need_h or need_w
        acc = torch.promote_types(h.dtype, torch.float32)  # fp32 for bf16/fp16/fp32 inputs, fp64 for fp64
        loss = torch.zeros((), dtype=acc, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        for s in range(0, h.shape[0], chunk):
            hc, yc = h[s : s + chunk], labels[s : s + chunk]
            logits = (hc @ weight.T).to(acc)  # (n, V)
            valid = yc != IGNORE_INDEX
            target = torch.where(valid, yc, 0)
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            picked = logits.gather(1, target[:, None])[:, 0]
            loss += ((lse - picked) * valid).sum()
            if need_grad:
                p = torch.exp(logits.sub_(lse[:, None]))  # softmax, in place of the logits
                p[torch.arange(len(yc), device=p.device), target] -= 1.0
                p.mul_(valid[:, None])
                p = p.to(h.dtype)
                if need_h:
                    grad_h[s : s + chunk] = p @ weight
                if need_w:
                    grad_w += p.T @ hc
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if need_w else None)
        return loss

    @staticmethod
    def backward(ctx, g: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * g.to(grad_h.dtype) if grad_h is not None else None,
                grad_w * g.to(grad_w.dtype) if grad_w is not None else None, None, None)


def linear_cross_entropy(h: Tensor, weight: Tensor, labels: Tensor, chunk_size: int = 1024) -> Tensor:
    """Sum over tokens of cross_entropy(h @ weight.T, labels), ignoring labels == -100, as one fp32 scalar.

    Args:
        h: (..., D) final hidden states.
        weight: (V, D) output projection.
        labels: (...) target ids, -100 where no loss is taken.
        chunk_size: tokens per chunk (peak extra memory ~ chunk_size x V x 6 bytes: fp32 logits + their bf16
            softmax; 1024 x 92,544 is 0.57 GB, and each chunk is still a large, efficient matmul).
    """
    if h.shape[:-1] != labels.shape:
        raise ValueError(f"hidden states {tuple(h.shape)} and labels {tuple(labels.shape)} do not match")
    return _LinearCrossEntropy.apply(h.reshape(-1, h.shape[-1]), weight, labels.reshape(-1), chunk_size)


def cross_entropy_reference(h: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
    """The unfused head: full logits, then `F.cross_entropy(reduction="sum")` (the test reference)."""
    logits = (h @ weight.T).to(torch.promote_types(h.dtype, torch.float32))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum",
                           ignore_index=IGNORE_INDEX)
