"""Per-request state: one `Sequence` per generated continuation (a request with n > 1 forks into n)."""

from __future__ import annotations

import itertools
from array import array
from enum import Enum, auto
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sampling_params import SamplingParams

_ids = itertools.count()

PENDING = -1  # token id of a sampled token still on its way from the device (see LLMEngine: overlapped steps)


class Status(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    """Tokens, KV blocks and progress of one continuation.

    `num_computed` counts the tokens whose K/V are in the cache. Each step computes
    `num_tokens - num_computed` tokens (a prefill chunk, or the one token sampled last step); when the step reaches
    `num_tokens`, the sequence samples its next token.
    """

    def __init__(self, request_id: str, prompt_ids: list[int], params: SamplingParams, index: int = 0):
        self.seq_id = next(_ids)
        self.request_id = request_id
        self.index = index  # which of the request's n choices
        self.token_ids = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        self.params = params
        self.status = Status.WAITING
        self.block_table = array("i")  # block ids (an int32 array: copied into the step's tensor in one go)
        self.slots_end = 0  # positions below it have KV slots of its own (kept by the BlockManager)
        self.num_computed = 0
        self.num_cached_prompt = 0  # prompt tokens served from the prefix cache on first schedule
        self.finish_reason: str | None = None
        self.logprobs: list[dict] = []  # per output token: {"logprob", "top": [(id, logprob), ...]}
        self.prompt_logprobs: list[dict | None] = []
        self.forked = params.n == 1  # a request with n > 1 forks at its first sample
        self.num_preemptions = 0
        self.last_is_pending_final = False  # the PENDING last token is its final one (the length limit)
        self.choice = None  # the engine's streaming state of this sequence (LLMEngine._Choice)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def is_finished(self) -> bool:
        return self.status == Status.FINISHED

    def num_blocks_for(self, num_tokens: int, block_size: int) -> int:
        return (num_tokens + block_size - 1) // block_size

    def fork(self, index: int) -> Sequence:
        """A child sharing this sequence's tokens and (by reference, see BlockManager.fork) its KV blocks."""
        child = Sequence(self.request_id, self.prompt_token_ids, self.params, index)
        child.token_ids = list(self.token_ids)
        child.num_computed = self.num_computed
        child.num_cached_prompt = self.num_cached_prompt
        child.prompt_logprobs = self.prompt_logprobs
        child.status = self.status
        child.forked = True
        return child

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, req={self.request_id!r}, tokens={self.num_tokens}, "
                f"computed={self.num_computed}, blocks={len(self.block_table)}, {self.status.name})")
