"""The reference generator: batched greedy / sampled decoding with a contiguous KV cache.

Deliberately plain (left padding, one preallocated cache per layer, one token per step) so that it can serve as the
oracle the serving engine is tested against: greedy outputs of `shusheng.deploy` must equal these token for token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .attention import AttentionBackend, sdpa
from .model import Transformer


class KVCacheAttention(AttentionBackend):
    """Causal attention over a contiguous per-layer cache (B, L, KV, D) with left padding.

    Each forward appends its T new keys/values at `self.length` (advanced by `advance(T)` after the whole model ran).
    """

    def __init__(self, model: Transformer, batch: int, max_len: int, padding_mask: Tensor):
        super().__init__()
        p = next(model.parameters())
        cfg = model.config
        shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.num_layers)]
        # real (non-pad) keys: the prompt's padding mask, then every generated slot (causality hides unwritten ones)
        self.valid = torch.ones(batch, max_len, dtype=torch.bool, device=p.device)
        self.valid[:, : padding_mask.shape[1]] = padding_mask
        self.length = 0

    def forward(self, q: Tensor, k: Tensor, v: Tensor, layer: int) -> Tensor:
        T, s = q.shape[1], self.length
        self.k[layer][:, s : s + T] = k
        self.v[layer][:, s : s + T] = v
        keys, values = self.k[layer][:, : s + T], self.v[layer][:, : s + T]
        # query i sits at cache slot s+i: it sees real keys at slots <= s+i, and itself (keeps pad rows finite)
        qpos = torch.arange(s, s + T, device=q.device)
        kpos = torch.arange(s + T, device=q.device)
        mask = (kpos[None, :] <= qpos[:, None])[None] & self.valid[:, None, : s + T]
        mask |= (kpos[None, :] == qpos[:, None])[None]
        out = sdpa(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), attn_mask=mask[:, None])
        return out.transpose(1, 2)

    def advance(self, T: int) -> None:
        self.length += T


@dataclass
class GenerationOutput:
    token_ids: list[list[int]]  # new tokens per prompt, up to and including a stop token
    finish_reasons: list[str]  # "stop" or "length"
    texts: list[str] | None = None
    logprobs: list[list[float]] = field(default_factory=list)  # log-prob of each chosen token


def sample(logits: Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None) -> Tensor:
    """(B, V) logits -> (B,) token ids. temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: Transformer,
    prompts: Any,
    tokenizer: Any = None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids: list[int] | None = None,
    seed: int | None = None,
) -> GenerationOutput:
    """Generate continuations for a batch of prompts.

    Args:
        model: the model (eval mode).
        prompts: a string, a list of strings (needs `tokenizer`), a list of token ids, or a list of such lists.
        tokenizer: encodes string prompts (no BOS is added: chat templates carry their own) and decodes outputs.
        max_new_tokens: new tokens per prompt at most.
        temperature: 0 for greedy; otherwise sampling with `top_k` (0 = off) and `top_p` (1 = off).
        stop_ids: token ids that end a sequence (kept in its output); default the config's eos ids.
        seed: seed for sampling, for reproducible outputs.

    Returns:
        GenerationOutput with new token ids, finish reasons, their log-probs, and texts when a tokenizer is given.
    """
    batch = _as_id_lists(prompts, tokenizer)
    if any(len(p) == 0 for p in batch):
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    stop = set(stop_ids if stop_ids is not None else _eos_ids(model))
    device = next(model.parameters()).device
    B, P = len(batch), max(len(p) for p in batch)
    ids = torch.zeros(B, P, dtype=torch.long, device=device)
    pad = torch.zeros(B, P, dtype=torch.bool, device=device)
    for i, p in enumerate(batch):  # left padding
        ids[i, P - len(p) :] = torch.tensor(p, device=device)
        pad[i, P - len(p) :] = True
    cache = KVCacheAttention(model, B, P + max_new_tokens, pad)
    positions = (pad.long().cumsum(-1) - 1).clamp(min=0)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)

    out: list[list[int]] = [[] for _ in range(B)]
    logps: list[list[float]] = [[] for _ in range(B)]
    done = [False] * B
    reasons = ["length"] * B
    x, pos = ids, positions
    for _ in range(max_new_tokens):
        h = model(x, positions=pos, attention=cache, return_hidden=True)
        cache.advance(x.shape[1])
        logits = model.output(h[:, -1]).float()  # (B, V)
        nxt = sample(logits, temperature, top_k, top_p, gen)
        lp = logits.log_softmax(-1).gather(-1, nxt[:, None])[:, 0]
        for i in range(B):
            if done[i]:
                continue
            t = int(nxt[i])
            out[i].append(t)
            logps[i].append(float(lp[i]))
            if t in stop:
                done[i], reasons[i] = True, "stop"
        if all(done):
            break
        x, pos = nxt[:, None], pos[:, -1:] + 1
    texts = [tokenizer.decode(o) for o in out] if tokenizer is not None else None
    return GenerationOutput(out, reasons, texts, logps)


def _eos_ids(model: Transformer) -> list[int]:
    eos = model.config.eos_token_id
    return [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]


def _as_id_lists(prompts: Any, tokenizer: Any) -> list[list[int]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, list) and prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a string, a list of strings, a list of token ids, or a list of such lists")
    result = []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("string prompts need a tokenizer: pass tokenizer=load_tokenizer(path)")
            result.append(tokenizer.encode(p))
        else:
            result.append([int(t) for t in p])
    return result
