"""Tests of shusheng.deploy.model_runner's input preparation: the decode fast path equals the general one."""

import torch

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams
from shusheng.deploy.model_runner import decode_rows
from shusheng.deploy.sequence import PENDING, Sequence


def test_decode_inputs_equal_the_general_inputs(tiny_ckpt):
    """Every decode-only step's inputs from `_decode_inputs` (int arrays, fed tokens by `torch.where`) equal
    `_inputs`' (the loop over any batch): ids after the feed, positions, slots, block tables, context lengths, the
    sampling rows; through overlapped steps, n > 1 forks, preemption and a one-token last prefill chunk."""
    eng = LLMEngine(EngineConfig(model=str(tiny_ckpt), device="cpu", num_kv_blocks=10))
    runner = eng.runner
    fast, checked = runner._decode_inputs, []

    def compared(batch, feed):
        ids, pos, rows, seqs, prompt_rows = runner._inputs(batch, feed)
        meta = runner.attn.meta
        got = fast(batch, feed)
        assert torch.equal(got[0], ids) and torch.equal(got[1], pos)
        assert got[2].tolist() == rows and got[3] == seqs and got[4] == prompt_rows
        for name in ("slot_mapping", "block_tables", "context_lens", "cu_seqlens_q"):
            assert torch.equal(getattr(runner.attn.meta, name), getattr(meta, name)), name
        for name in ("max_q_len", "max_context_len", "decode_only"):
            assert getattr(runner.attn.meta, name) == getattr(meta, name), name
        checked.append((feed is not None and bool((got[0] != 0).all()), bool(prompt_rows)))
        return got

    runner._decode_inputs = compared
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (17, 40, 5, 33)]
    params = [SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True),
              SamplingParams(max_tokens=25, temperature=0.9, seed=2, n=2),
              SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, prompt_logprobs=1),
              SamplingParams(max_tokens=15, temperature=0.0, ignore_eos=True)]
    eng.generate(prompts, params)
    assert eng.scheduler.num_preemptions > 0 and len(checked) > 20 and any(fed for fed, _ in checked)
    # a decode-only step that is a prompt's last token (its last one-token prefill chunk) has a prompt-logprobs row
    eng.config.max_num_batched_tokens = 16
    out = eng.generate([prompts[3][:32] + [9]], SamplingParams(max_tokens=3, prompt_logprobs=2))[0]
    assert len(out.prompt_logprobs) == 33 and checked[-3][1]


def test_decode_rows_pad_for_a_cuda_graph():
    """The staging of a CUDA-graph replay: one column per sequence, then padding columns that compute token 0 at
    position 0, write no slot and feed nothing."""
    a, b = Sequence("a", [5, 6, 7], SamplingParams()), Sequence("b", list(range(3, 40)), SamplingParams())
    a.block_table.extend([4])
    b.block_table.extend([1, 9, 2])
    a.num_computed, b.num_computed = 2, 36
    b.token_ids[36] = PENDING
    vec, fed, longest = decode_rows([a, b], {b.seq_id: 5}, 4, 16)
    assert vec.tolist() == [[7, 0, 0, 0],  # b's token is fed: row 5 of the tokens the step before sampled
                            [2, 36, 0, 0],
                            [4 * 16 + 2, 2 * 16 + 4, -1, -1],
                            [3, 37, 1, 1],
                            [-1, 5, -1, -1]]
    assert fed and longest == 37
    vec, fed, longest = decode_rows([a], {}, 1, 16)
    assert vec.tolist() == [[7], [2], [66], [3], [-1]] and not fed and longest == 3
