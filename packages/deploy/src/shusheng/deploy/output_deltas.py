"""Step outputs as deltas across a process boundary, and their reassembly on the other side.

An engine's `RequestOutput` for a running request is a snapshot: the prompt, every token id, text and logprob so far,
plus what is new since the request's previous output. Shipping snapshots between processes costs O(length) per
request per step, so a long stream costs O(length^2) in pickling. `delta` keeps only what is new (the prompt's
log-probs travel once, with the request's first output); `OutputRebuilder`, on the receiving side, knows each
request's prompt and appends the deltas, and hands out outputs equal to the engine's own.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from .outputs import CompletionOutput, RequestOutput


def choice_delta(c: CompletionOutput) -> CompletionOutput:
    """What of choice `c` is new since its previous output: the new text and ids, and the log-probs of those ids.
    `c` is a snapshot, or the engine's own live output (`LLMEngine.delta_outputs`), read before it grows."""
    index, text, ids, logprobs, finish_reason, stop_reason = wire_choice(c)
    return CompletionOutput(index, "", [], logprobs, finish_reason, stop_reason, text, ids)


def delta(out: RequestOutput, first: bool) -> tuple:
    """`out` as the pipe carries it: only what is new since the request's previous output, as plain tuples (they
    pickle and unpickle several times faster than the dataclasses); `first`: its first output.

    `out` is a snapshot, or already a delta (an engine with `delta_outputs` makes them without copying its lists;
    a delta has no prompt ids), of which only the first keeps the prompt's log-probs. `OutputRebuilder.rebuild`
    takes the tuple."""
    if out.prompt_token_ids:  # a snapshot: cut the new part out
        choices = [wire_choice(c) for c in out.outputs]
    else:
        choices = [(c.index, c.delta_text, c.delta_token_ids, c.logprobs, c.finish_reason, c.stop_reason)
                   for c in out.outputs]
    return (out.request_id, out.finished, out.num_cached_tokens, out.metrics,
            out.prompt_logprobs if first else None, choices)


def wire_choice(c: CompletionOutput) -> tuple:
    """What of choice `c` (a snapshot, or the engine's own live output) is new, as the pipe's tuple: `choice_delta`
    without the dataclass."""
    # the new ids are the last of the snapshot (its logprobs list may run ahead of it)
    new, end = c.delta_token_ids, len(c.token_ids)
    return (c.index, c.delta_text, new, None if c.logprobs is None else c.logprobs[end - len(new) : end],
            c.finish_reason, c.stop_reason)


class Prefix(Sequence):
    """The first `n` items of a list that only grows: a running output's snapshot of its token ids or log-probs
    without a copy. Copying them every step cost O(length) per request per step (a long stream O(length^2)); the
    list grows only past `n`, so the view stays what it was when it was made."""

    __slots__ = ("_items", "_n")

    def __init__(self, items: list, n: int):
        self._items, self._n = items, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._items[slice(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError("Prefix index out of range")
        return self._items[i % self._n]

    def __iter__(self):
        return itertools.islice(self._items, self._n)

    def __eq__(self, other) -> bool:
        if isinstance(other, (list, Prefix)):
            return len(other) == self._n and all(a == b for a, b in zip(self, other, strict=False))
        return NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass
class _Request:
    prompt: str | None
    prompt_token_ids: list[int]
    choices: dict[int, CompletionOutput] = field(default_factory=dict)
    prompt_logprobs: list | None = None


class OutputRebuilder:
    """Turns the deltas of `delta` back into full outputs; `add` each request before its first output arrives.

    Not thread-safe: one thread adds and rebuilds (or guard it with a lock)."""

    def __init__(self):
        self._requests: dict[str, _Request] = {}

    def add(self, request_id: str, prompt: str | None, prompt_token_ids: list[int]) -> None:
        self._requests[request_id] = _Request(prompt, prompt_token_ids)

    def drop(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._requests)

    def rebuild(self, d: tuple) -> RequestOutput | None:
        """The full output that `d` (made by `delta`) stands for; None for a request not added (or already
        finished)."""
        request_id, finished, num_cached, metrics, prompt_logprobs, choices = d
        req = self._requests.get(request_id)
        if req is None:
            return None
        if prompt_logprobs is not None:
            req.prompt_logprobs = prompt_logprobs
        outs = []
        for index, delta_text, delta_ids, logprobs, finish_reason, stop_reason in choices:
            acc = req.choices.get(index)
            if acc is None:
                acc = req.choices[index] = CompletionOutput(index, logprobs=None if logprobs is None else [])
            acc.text += delta_text
            acc.token_ids.extend(delta_ids)
            if logprobs is not None:
                acc.logprobs.extend(logprobs)
            # a finished request hands over its lists; a running one a view of them as they are (later deltas
            # extend them)
            outs.append(CompletionOutput(
                index, acc.text, acc.token_ids if finished else Prefix(acc.token_ids, len(acc.token_ids)),
                acc.logprobs if finished or acc.logprobs is None else Prefix(acc.logprobs, len(acc.logprobs)),
                finish_reason, stop_reason, delta_text, delta_ids))
        if finished:
            del self._requests[request_id]
        return RequestOutput(request_id, req.prompt, req.prompt_token_ids, outs, finished, req.prompt_logprobs,
                             num_cached, metrics)
