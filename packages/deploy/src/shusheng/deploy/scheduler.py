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

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_decode_only(self) -> bool:
        """Every sequence computes its one last token on top of a cache, and samples (the CUDA-graph case); a
        prefill chunk cut to one token by the budget is not a decode."""
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
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.last_is_pending_final:  # finishes when its last token is read back: nothing to compute
                i += 1
                continue
            n = min(seq.num_tokens - seq.num_computed, budget)
            while not self.bm.allocate(seq, n):
                victim = self.running.pop()  # the most recently admitted
                self._preempt(victim, batch)
                if victim is seq:
                    break
            else:
                batch.seqs.append(seq)
                batch.num_new_tokens.append(n)
                budget -= n
                i += 1
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs and not batch.preempted:
            seq = self.waiting[0]
            cached = self.bm.cached_prefix(seq) if seq.num_computed == 0 else []
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
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
        batch.block_copies = self.bm.take_copies()
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
