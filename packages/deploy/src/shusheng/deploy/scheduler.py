"""Continuous batching: which sequences compute how many tokens this step.

One rule for prefill and decode (as in vLLM v1): each scheduled sequence computes `num_tokens - num_computed`
tokens, capped by the step's token budget, so long prompts are prefilled in chunks that share steps with decodes.
Running sequences go first, in arrival order; when the KV pool is full, the most recently admitted running sequence
is preempted (its blocks freed, recomputed later from its tokens) until the older ones fit. Waiting sequences are
admitted in arrival order while budget, sequence slots and blocks last; a preempted sequence goes back to the front.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .config import EngineConfig
from .sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst)
    preempted: list[Sequence] = field(default_factory=list)
    decode_only: bool | None = None  # `is_decode_only`, as the scheduler found it (None: not known)
    prompt_logits: bool = False  # a sequence computes prompt positions whose log-probs were asked for

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_decode_only(self) -> bool:
        """Every sequence computes its one last token on top of a cache, and samples (the CUDA-graph case); a
        prefill chunk cut to one token by the budget is not a decode."""
        if self.decode_only is not None:
            return self.decode_only
        return all(n == 1 and s.num_computed > 0 and s.num_tokens - s.num_computed == 1
                   for s, n in zip(self.seqs, self.num_new_tokens, strict=True))

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager):
        self.config = config
        self.bm = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        running, allocate = self.running, self.bm.allocate
        seqs, counts = batch.seqs, batch.num_new_tokens
        decode_only = True
        i = 0
        while i < len(running) and budget > 0:  # a per-token loop at decode: kept lean
            seq = running[i]
            if seq.last_is_pending_final:  # finishes when its last token is read back: nothing to compute
                i += 1
                continue
            computed = seq.num_computed
            left = len(seq.token_ids) - computed
            n = left if left < budget else budget
            # below slots_end (most decode steps) the sequence's own blocks have room: nothing to allocate
            while computed + n > seq.slots_end and not allocate(seq, n):
                victim = running.pop()  # the most recently admitted
                self._preempt(victim, batch)
                if victim is seq:
                    break
            else:
                seqs.append(seq)
                counts.append(n)
                decode_only = decode_only and left == 1 and computed > 0
                if computed < seq.num_prompt_tokens and seq.params.prompt_logprobs is not None:
                    batch.prompt_logits = True
                budget -= n
                i += 1
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs and not batch.preempted:
            seq = self.waiting[0]
            # a request for prompt logprobs computes every prompt position: cached ones would have none
            cached = [] if seq.num_computed or seq.params.prompt_logprobs is not None else self.bm.cached_prefix(seq)
            start = len(cached) * self.bm.block_size
            n = min(seq.num_tokens - start, budget)
            if not self.bm.allocate(seq, n, cached):
                break
            seq.num_computed = start
            if seq.num_preemptions == 0:
                seq.num_cached_prompt = min(start, seq.num_prompt_tokens)
            seq.status = Status.RUNNING
            self.waiting.popleft()
            self.running.append(seq)
            seqs.append(seq)
            counts.append(n)
            decode_only = decode_only and n == 1 and start > 0 and seq.num_tokens - start == 1
            if start < seq.num_prompt_tokens and seq.params.prompt_logprobs is not None:
                batch.prompt_logits = True
            budget -= n
        batch.block_copies = self.bm.take_copies()
        batch.decode_only = decode_only
        return batch

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        self.bm.free_seq(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """End a sequence (stopped, at its length limit, or aborted) and free its blocks."""
        if seq.status == Status.RUNNING:
            self.running.remove(seq)
        elif seq.status == Status.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        self.bm.free_seq(seq)
        seq.status = Status.FINISHED
        seq.finish_reason = reason

    def admit_fork(self, child: Sequence, after: Sequence) -> None:
        """A forked child runs right after its parent (same arrival priority)."""
        self.running.insert(self.running.index(after) + 1, child)
