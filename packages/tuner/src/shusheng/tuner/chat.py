"""A terminal chat with a checkpoint (and optionally a LoRA adapter, folded in at load), streaming tokens.

Each turn renders the whole conversation with the chat template, then decodes token by token with the reference
KV cache of `shusheng.model.generate` (greedy, or sampled with temperature / top-k / top-p), printing text as it
completes (`IncrementalDetokenizer`: never half a character). `/reset` starts over, `/exit` (or end of input)
quits.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import torch

from shusheng.model import IncrementalDetokenizer, Tokenizer, Transformer, load_pretrained, load_tokenizer
from shusheng.model.chat import parse, render_ids
from shusheng.model.generate import KVCacheAttention, sample

from .data import resolve_template
from .merge import load_merged


def load_for_chat(path: str | Path, adapter: str | Path | None = None, dtype: torch.dtype | None = None,
                  device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer]:
    """A checkpoint (with `adapter` folded into its weights) and its tokenizer, ready to generate."""
    if adapter is not None:
        model, _ = load_merged(adapter, path, dtype, device)
    else:
        model = load_pretrained(path, dtype=dtype, device=device)
    for folder in (Path(path), Path(adapter) if adapter else None):
        if folder is not None and ((folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file()):
            return model.eval(), load_tokenizer(folder)
    raise FileNotFoundError(f"no tokenizer in {path}{f' or {adapter}' if adapter else ''}")


@torch.no_grad()
def stream_ids(model: Transformer, prompt: list[int], max_new_tokens: int, stop_ids: list[int],
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> Iterator[int]:
    """Yields new token ids one at a time (the stop token included, then it ends)."""
    device = next(model.parameters()).device
    cache = KVCacheAttention(model, 1, len(prompt) + max_new_tokens, torch.ones(1, len(prompt), dtype=torch.bool,
                                                                                  device=device))
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    x = torch.tensor([prompt], device=device)
    pos = torch.arange(len(prompt), device=device)[None]
    for _ in range(max_new_tokens):
        h = model(x, positions=pos, attention=cache, return_hidden=True)
        cache.advance(x.shape[1])
        nxt = sample(model.output(h[:, -1]).float(), temperature, top_k, top_p, gen)  # (1,)
        token = int(nxt)
        yield token
        if token in stop_ids:
            return
        x, pos = nxt[:, None], pos[:, -1:] + 1


class ChatSession:
    """A conversation with a model: `reply(text)` streams the answer and keeps the history.

    Args:
        model: the model (eval mode).
        tokenizer: its tokenizer.
        template: chat template name; default the tokenizer's, else internlm2.
        system: a system prompt for the conversation.
        max_new_tokens, temperature, top_k, top_p, seed: decoding settings (temperature 0: greedy).
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, template: str | None = None,
                 system: str | None = None, max_new_tokens: int = 512, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.template = resolve_template(template, tokenizer)
        self.system = system
        self.settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             seed=seed)
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str) -> Iterator[str]:
        """Adds a user turn and yields the reply's text as it is generated (end-of-turn tokens not shown)."""
        self.messages.append({"role": "user", "content": text})
        prompt, _ = render_ids(self.template, self.tokenizer, self.messages, add_generation_prompt=True)
        stop = self.tokenizer.stop_ids
        detok = IncrementalDetokenizer(self.tokenizer, skip_special_tokens=True)
        ids = []
        for token in stream_ids(self.model, prompt, stop_ids=stop, **self.settings):
            ids.append(token)
            if token not in stop:
                yield detok.add(token)
        yield detok.flush()
        self.messages.append(parse(self.template, self.tokenizer.decode(ids)).to_message())


def run_terminal(session: ChatSession, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """The read-reply loop: one user line at a time; `/reset`, `/exit` (default streams: the terminal's)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    interactive = hasattr(stdin, "isatty") and stdin.isatty()
    while True:
        if interactive:
            stdout.write("user> ")
            stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            return
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            session.reset()
            stdout.write("(conversation reset)\n")
            continue
        if not text.strip():
            continue
        stdout.write("assistant> ")
        for piece in session.reply(text):
            stdout.write(piece)
            stdout.flush()
        stdout.write("\n")
        stdout.flush()
