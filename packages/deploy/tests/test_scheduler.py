"""Tests of shusheng.deploy.scheduler and block_manager: the decode fast paths agree with what they shortcut."""

import dataclasses

import torch

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams
from shusheng.deploy.block_manager import BlockManager
from shusheng.deploy.scheduler import Scheduler
from shusheng.deploy.sequence import Sequence


def scheduler(num_blocks: int, **kw) -> tuple[Scheduler, BlockManager, list[int]]:
    """A scheduler over its own block manager, and the token counts of the `allocate` calls it makes."""
    cfg = EngineConfig(model="x", device="cpu", **kw)
    bm = BlockManager(num_blocks, cfg.block_size)
    calls, allocate = [], bm.allocate

    def counted(seq, n, cached=()):
        calls.append(n)
        return allocate(seq, n, cached)

    bm.allocate = counted
    return Scheduler(cfg, bm), bm, calls


def step(batch) -> None:
    """What the engine does with a batch: its tokens are computed; a sequence at its end samples one more."""
    for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
        seq.num_computed += n
        if seq.num_computed == seq.num_tokens:
            seq.token_ids.append(7)


def test_decode_steps_allocate_only_when_a_block_fills():
    sch, bm, calls = scheduler(16)
    seq = Sequence("a", list(range(3, 23)), SamplingParams())  # 20 tokens: blocks of 16
    sch.add(seq)
    for _ in range(41):  # the prefill, then 40 decodes (positions 20 .. 59)
        batch = sch.schedule()
        assert batch.seqs == [seq]
        step(batch)
    assert calls == [20, 1, 1]  # the prompt, then crossing into the blocks at positions 32 and 48
    assert len(seq.block_table) == 4 and seq.slots_end == 64 and bm.num_free_blocks == 12


def test_a_fork_makes_the_next_write_copy_the_shared_block():
    sch, bm, calls = scheduler(16)
    parent = Sequence("a", list(range(3, 23)), SamplingParams(n=2))
    sch.add(parent)
    step(sch.schedule())  # the prefill: 2 blocks, the second half full
    child = parent.fork(1)
    bm.fork(parent, child)
    sch.admit_fork(child, after=parent)
    shared = parent.block_table[1]
    assert parent.slots_end == child.slots_end == 0
    batch = sch.schedule()  # both write position 20, in the block they share
    assert batch.seqs == [parent, child] and calls == [20, 1, 1]
    assert batch.block_copies == [(shared, parent.block_table[1])] and child.block_table[1] == shared
    step(batch)
    step(sch.schedule())  # their own blocks now: no allocation, no copy
    assert len(calls) == 3 and parent.slots_end == child.slots_end == 32


def test_a_preempted_sequence_allocates_again():
    sch, bm, calls = scheduler(3)
    a, b = Sequence("a", list(range(3, 19)), SamplingParams()), Sequence("b", list(range(3, 19)), SamplingParams())
    sch.add(a)
    sch.add(b)
    step(sch.schedule())  # one full block each
    batch = sch.schedule()  # both need a second block; one is left: the later one is preempted
    assert batch.seqs == [a] and batch.preempted == [b]
    assert (b.slots_end, len(b.block_table), b.num_computed) == (0, 0, 0) and a.slots_end == 32
    step(batch)
    sch.finish(a, "length")
    batch = sch.schedule()  # b comes back: its 17 tokens recomputed into new blocks
    assert batch.seqs == [b] and batch.num_new_tokens == [17] and b.slots_end == 32 and calls[-1] == 17


def test_decode_only_flag_matches_its_definition(tiny_ckpt):
    """The scheduler's `decode_only` (it picks the CUDA-graph path) equals the definition over every sequence, through
    a prefill chunk cut to one token, a one-token prompt, a prefix-cache hit that leaves one token to compute, n > 1
    forks, preemption."""
    seen = []
    eng = LLMEngine(EngineConfig(model=str(tiny_ckpt), device="cpu", num_kv_blocks=8, max_num_batched_tokens=24))
    schedule = eng.scheduler.schedule

    def checked():
        batch = schedule()
        assert batch.decode_only == dataclasses.replace(batch, decode_only=None).is_decode_only
        seen.append((batch.decode_only, batch.num_new_tokens, [s.num_computed for s in batch.seqs]))
        return batch

    eng.scheduler.schedule = checked
    g = torch.Generator().manual_seed(0)
    shared, a, b = (torch.randint(3, 300, (n,), generator=g).tolist() for n in (32, 23, 40))
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    eng.generate([shared + [5]], params)
    assert eng.generate([shared + [6]], params)[0].num_cached_tokens == 32
    assert (True, [1], [32]) in seen  # admitted with all but one prompt token cached: a decode
    eng.generate([[5]], params)
    assert (False, [1], [0]) in seen  # a one-token prompt computes one token, but on no cache: not a decode
    eng.generate([a, b], [dataclasses.replace(params, max_tokens=30), SamplingParams(max_tokens=12, seed=1, n=2)])
    assert (False, [23, 1], [0, 0]) in seen  # the budget left one token for b's first chunk: not a decode
    assert eng.scheduler.num_preemptions > 0 and (True, [1, 1, 1]) in [x[:2] for x in seen]  # a, b's two choices


def test_prompt_logprob_steps_are_flagged_so_they_skip_the_cuda_graph(tiny_ckpt):
    """A CUDA graph returns only the sampled rows' logits: every step that computes prompt positions of a request
    for prompt logprobs says so (`prompt_logits`), also when it is a decode-only step (a one-token last chunk)."""
    eng = LLMEngine(EngineConfig(model=str(tiny_ckpt), device="cpu", max_num_batched_tokens=16))
    schedule, seen = eng.scheduler.schedule, []

    def recorded():
        batch = schedule()
        seen.append((batch.is_decode_only, batch.prompt_logits, list(batch.num_new_tokens)))
        return batch

    eng.scheduler.schedule = recorded
    prompt = torch.randint(3, 300, (33,), generator=torch.Generator().manual_seed(1)).tolist()
    out = eng.generate([prompt], SamplingParams(max_tokens=3, prompt_logprobs=0, temperature=0.0))[0]
    assert len(out.prompt_logprobs) == 33
    assert seen[:3] == [(False, True, [16]), (False, True, [16]), (True, True, [1])]  # the prompt's three chunks
    assert all(not flagged for _, flagged, _ in seen[3:])  # its decodes
    eng.generate([prompt], SamplingParams(max_tokens=2, temperature=0.0))
    assert not any(flagged for _, flagged, _ in seen[5:])  # no prompt logprobs asked: never flagged
