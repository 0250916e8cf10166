"""Prefill and mixed steps cut at the attention calls (prefill_graphs.py): the pieces, padded to a token bucket,
compute what the eager forward computes. On CPU the pieces run eager; on a GPU they replay CUDA graphs."""

import pytest
import torch

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams
from shusheng.deploy.paged_attention import AttentionMetadata
from shusheng.deploy.prefill_graphs import PrefillGraphs, prefill_graph_sizes
from shusheng.model import generate, load_pretrained

GREEDY = dict(temperature=0.0, ignore_eos=True)


def prompts_of(lengths, seed=0, vocab=300):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def test_bucket_sizes():
    assert prefill_graph_sizes(2048) == [16, 32, 64, 128, 256, 384, 512, 640, 768, 896, 1024, 1280, 1536, 1792,
                                         2048]
    assert prefill_graph_sizes(100) == [16, 32, 64, 100]
    assert prefill_graph_sizes(16) == [16]
    assert prefill_graph_sizes(5000)[-3:] == [4096, 4608, 5000]


def test_bucket_lookup(tiny_ckpt):
    eng = LLMEngine(EngineConfig(model=str(tiny_ckpt), device="cpu"))
    pg = PrefillGraphs(eng.runner.decoder, eng.runner.attn, [16, 64, 100])
    assert [pg.bucket(n) for n in (1, 16, 17, 64, 65, 100, 101)] == [16, 16, 64, 64, 100, 100, None]


def reference(ckpt, prompts, max_tokens):
    model = load_pretrained(ckpt)
    return [generate(model, p, max_new_tokens=max_tokens, stop_ids=[]).token_ids[0] for p in prompts]


@pytest.mark.parametrize("opts", [dict(), dict(max_num_batched_tokens=24), dict(num_kv_blocks=8)],
                         ids=["default", "chunked", "preempting"])
def test_pieces_in_the_engine_equal_reference(tiny_ckpt, opts):
    """Prefill, chunked and mixed steps (decodes join prefills) through the pieces, padded to buckets whose padded
    tokens must store nothing into the cache: greedy output equals the reference; no block leaks."""
    eng = LLMEngine(EngineConfig(model=str(tiny_ckpt), device="cpu", **opts))
    runner = eng.runner
    runner.prefill_graphs = pg = PrefillGraphs(runner.decoder, runner.attn, [16, 48, 256])
    calls = []
    run = pg.run
    pg.run = lambda ids, pos: calls.append(len(ids)) or run(ids, pos)
    shared = prompts_of([35], seed=1)[0]
    prompts = prompts_of([1, 7, 16, 17, 40, 63], seed=2) + [shared + [4], shared + [5, 6]]
    outs = eng.generate(prompts, SamplingParams(max_tokens=10, **GREEDY))
    assert [o.outputs[0].token_ids for o in outs] == reference(tiny_ckpt, prompts, 10)
    assert calls and any(n not in pg.sizes for n in calls)  # padded steps ran
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


def test_padding_stores_nothing(tiny_ckpt):
    """A 5-token step in a 16-token bucket writes its 5 cache slots per layer and no other; the cache and the
    hidden states are the eager forward's (to fp32 rounding: the GEMMs see 16 rows instead of 5)."""
    eng = LLMEngine(EngineConfig(model=str(tiny_ckpt), device="cpu", num_kv_blocks=4))
    runner = eng.runner
    pg = PrefillGraphs(runner.decoder, runner.attn, [16])
    seq_ids = prompts_of([5], seed=4)[0]

    def meta():
        i32 = torch.int32
        return AttentionMetadata(slot_mapping=torch.arange(16, 21), block_tables=torch.tensor([[1, 2]], dtype=i32),
                                 context_lens=torch.tensor([5], dtype=i32),
                                 cu_seqlens_q=torch.tensor([0, 5], dtype=i32), max_q_len=5, max_context_len=5,
                                 decode_only=False)

    ids, pos = torch.tensor(seq_ids), torch.arange(5)
    results = []
    for piecewise in (False, True):
        for c in runner.k_caches + runner.v_caches:
            c.fill_(7.0)  # any slot written shows
        runner.attn.meta = meta()
        with torch.inference_mode():
            h = pg.run(ids, pos) if piecewise else runner.decoder(ids, pos, runner.attn)
        results.append((h.clone(), [c.clone() for c in runner.k_caches + runner.v_caches]))
    (h0, c0), (h1, c1) = results
    torch.testing.assert_close(h1, h0)
    for a, b in zip(c0, c1, strict=True):
        torch.testing.assert_close(b, a)
        assert (a.view(-1, *a.shape[2:])[16:21] != 7.0).all() and (a.view(-1, *a.shape[2:])[21:] == 7.0).all()


@pytest.mark.gpu
def test_gpu_prefill_graphs_replay(tiny_ckpt):
    """fp32 on the GPU: prefill and mixed steps replay the piecewise graphs; greedy output equals the reference."""
    eng = LLMEngine(EngineConfig(model=str(tiny_ckpt), device="cuda", dtype="float32", max_num_batched_tokens=40))
    pg = eng.runner.prefill_graphs
    assert pg is not None and set(pg.graphs) == set(pg.sizes) == {16, 32, 40}
    prompts = prompts_of([1, 7, 16, 17, 40, 63, 90], seed=5)
    outs = eng.generate(prompts, SamplingParams(max_tokens=12, **GREEDY))
    assert [o.outputs[0].token_ids for o in outs] == reference(tiny_ckpt, prompts, 12)
    assert pg.replays > 0
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks
    del eng, pg  # its KV pool takes most of the card
    off = LLMEngine(EngineConfig(model=str(tiny_ckpt), device="cuda", dtype="float32", max_prefill_graph_tokens=0,
                                 num_kv_blocks=64))
    assert off.runner.prefill_graphs is None
