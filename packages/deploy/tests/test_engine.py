"""Acceptance 1 and 4: greedy engine outputs equal the reference `generate`; blocks never leak."""

import pytest
import torch

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams
from shusheng.model import generate, load_pretrained

GREEDY = dict(temperature=0.0, ignore_eos=True)


def engine(ckpt, **kw) -> LLMEngine:
    kw.setdefault("device", "cpu")
    return LLMEngine(EngineConfig.from_kwargs(str(ckpt), **kw))


def reference(ckpt, prompts, max_tokens):
    model = load_pretrained(ckpt)
    return [generate(model, p, max_new_tokens=max_tokens, stop_ids=[]).token_ids[0] for p in prompts]


def prompts_of(lengths, seed=0, vocab=300):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def check(eng, ckpt, prompts, max_tokens=12):
    outs = eng.generate(prompts, SamplingParams(max_tokens=max_tokens, **GREEDY))
    got = [o.outputs[0].token_ids for o in outs]
    assert got == reference(ckpt, prompts, max_tokens)
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks  # nothing leaked
    return outs


def test_greedy_mixed_lengths_equal_reference(tiny_ckpt):
    eng = engine(tiny_ckpt)
    check(eng, tiny_ckpt, prompts_of([1, 5, 16, 17, 33, 64, 3]))


def test_prefix_cache_hits(tiny_ckpt):
    eng = engine(tiny_ckpt)
    shared = prompts_of([40], seed=1)[0]
    first = check(eng, tiny_ckpt, [shared + [5, 6]])
    assert first[0].num_cached_tokens == 0
    later = check(eng, tiny_ckpt, [shared + [7], shared + [8, 9, 10], shared[:32]])
    assert [o.num_cached_tokens for o in later] == [32, 32, 16]  # full blocks only, one token left to compute
    assert eng.block_manager.hits > 0


def test_preemption_with_a_tiny_pool(tiny_ckpt):
    eng = engine(tiny_ckpt, num_kv_blocks=8, block_size=16)  # 128 slots for 6 sequences of ~40 tokens
    check(eng, tiny_ckpt, prompts_of([20, 25, 18, 30, 22, 27], seed=2), max_tokens=16)
    assert eng.scheduler.num_preemptions > 0


def test_chunked_prefill_small_budget(tiny_ckpt):
    eng = engine(tiny_ckpt, max_num_batched_tokens=8)
    check(eng, tiny_ckpt, prompts_of([30, 3, 19], seed=3))


def test_requests_added_while_others_decode(tiny_ckpt):
    eng = engine(tiny_ckpt, max_num_batched_tokens=16)
    prompts = prompts_of([10, 23, 7, 40], seed=4)
    p = SamplingParams(max_tokens=10, **GREEDY)
    ids = [eng.add_request(prompts[0], p), eng.add_request(prompts[1], p)]
    final = {}
    for step in range(200):
        if step in (3, 6):
            ids.append(eng.add_request(prompts[len(ids)], p))
        for out in eng.step():
            if out.finished:
                final[out.request_id] = out.outputs[0].token_ids
        if len(final) == 4:
            break
    assert [final[i] for i in ids] == reference(tiny_ckpt, prompts, 10)
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


def test_no_block_leaks_after_finish_abort_and_preemption(tiny_ckpt):
    eng = engine(tiny_ckpt, num_kv_blocks=10)
    prompts = prompts_of([30, 12, 25, 40, 9, 33], seed=5)
    ids = [eng.add_request(q, SamplingParams(max_tokens=20, n=2 if i % 2 else 1, **GREEDY))
           for i, q in enumerate(prompts)]
    for step in range(400):
        if step == 5:
            eng.abort(ids[1])
        if step == 9:
            eng.abort(ids[4])
        eng.step()
        if not eng.has_unfinished():
            break
    assert not eng.has_unfinished()
    assert eng.scheduler.num_preemptions > 0
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks
    assert all(b.ref_count == 0 for b in eng.block_manager.blocks)


def test_n_choices_share_the_prompt(tiny_ckpt):
    eng = engine(tiny_ckpt)
    prompt = prompts_of([21], seed=6)[0]
    out = eng.generate([prompt], SamplingParams(n=3, max_tokens=8, temperature=1.0, seed=11, ignore_eos=True))[0]
    assert [o.index for o in out.outputs] == [0, 1, 2] and all(len(o.token_ids) == 8 for o in out.outputs)
    again = eng.generate([prompt], SamplingParams(n=3, max_tokens=8, temperature=1.0, seed=11, ignore_eos=True))[0]
    assert [o.token_ids for o in again.outputs] == [o.token_ids for o in out.outputs]
    greedy = eng.generate([prompt], SamplingParams(n=3, max_tokens=8, **GREEDY))[0]
    ref = reference(tiny_ckpt, [prompt], 8)[0]
    assert [o.token_ids for o in greedy.outputs] == [ref] * 3  # copy-on-write kept each child's cache right
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


def test_logprobs_and_prompt_logprobs(tiny_ckpt):
    eng = engine(tiny_ckpt, max_num_batched_tokens=8)  # prompt logprobs across prefill chunks
    prompt = prompts_of([13], seed=7)[0]
    out = eng.generate([prompt], SamplingParams(max_tokens=4, logprobs=3, prompt_logprobs=2, **GREEDY))[0]
    model = load_pretrained(tiny_ckpt)
    full = prompt + out.outputs[0].token_ids
    with torch.no_grad():
        lp = model(torch.tensor([full]))[0].log_softmax(-1)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for t in range(1, len(prompt)):
        entry = out.prompt_logprobs[t]
        assert entry["token_id"] == prompt[t]
        assert entry["logprob"] == pytest.approx(lp[t - 1, prompt[t]].item(), abs=1e-4)
        assert [i for i, _ in entry["top"]] == lp[t - 1].topk(2).indices.tolist()
    for j, entry in enumerate(out.outputs[0].logprobs):
        pos = len(prompt) - 1 + j
        assert entry["logprob"] == pytest.approx(lp[pos, full[pos + 1]].item(), abs=1e-4)
        assert entry["top"][0][0] == full[pos + 1]  # greedy: the chosen token is the most likely


def test_prompt_logprobs_after_a_prefix_cache_hit(tiny_ckpt):
    """Log-likelihood evaluation scores one context with several continuations: the shared prefix is in the cache
    after the first request, and a request for prompt logprobs must still get one for every prompt position
    (it computes its whole prompt), equal to those of a cold run."""
    eng = engine(tiny_ckpt)
    context = prompts_of([40], seed=9)[0]
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, **GREEDY)
    cold = eng.generate([context + [5, 6]], params)[0]
    assert eng.generate([context + [7]], SamplingParams(max_tokens=1, **GREEDY))[0].num_cached_tokens >= 32
    warm = eng.generate([context + [6, 6]], params)[0]  # its first 32 tokens are in the cache
    for out, prompt in ((cold, context + [5, 6]), (warm, context + [6, 6])):
        assert len(out.prompt_logprobs) == len(prompt) and out.prompt_logprobs[0] is None
        assert [e["token_id"] for e in out.prompt_logprobs[1:]] == prompt[1:]
    assert [e["logprob"] for e in warm.prompt_logprobs[1:40]] == \
        pytest.approx([e["logprob"] for e in cold.prompt_logprobs[1:40]], abs=1e-5)


def test_stop_strings_and_eos(tiny_ckpt):
    eng = engine(tiny_ckpt)
    prompt = prompts_of([9], seed=8)[0]
    free = eng.generate([prompt], SamplingParams(max_tokens=20, **GREEDY))[0].outputs[0]
    stop = free.text[5:12]
    assert len(stop) == 7
    cut = eng.generate([prompt], SamplingParams(max_tokens=20, stop=[stop], **GREEDY))[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == free.text[: free.text.index(stop)]
    tok = free.token_ids[3]
    by_id = eng.generate([prompt], SamplingParams(max_tokens=20, stop_token_ids=[tok], **GREEDY))[0].outputs[0]
    assert by_id.token_ids == free.token_ids[: free.token_ids.index(tok) + 1] and by_id.finish_reason == "stop"


def test_requests_that_can_never_fit(tiny_ckpt):
    eng = engine(tiny_ckpt, num_kv_blocks=4, max_model_len=256)
    with pytest.raises(ValueError, match="maximum context length is 256 tokens"):
        eng.add_request(list(range(3, 253)), SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="can never fit: 90 tokens need 6 KV blocks and the pool holds 4"):
        eng.add_request(list(range(3, 83)), SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="prompt is empty"):
        eng.add_request([], SamplingParams())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.add_request([1, 10**6], SamplingParams())


def test_transformers_checkpoint_matches_transformers_generate(tmp_path, tiny_ckpt):
    transformers = pytest.importorskip("transformers")
    import shutil

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    ref.save_pretrained(tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # any tokenizer with the same vocabulary size
        shutil.copy(tiny_ckpt / f, tmp_path / f)
    prompts = prompts_of([6, 19, 2], seed=9)
    eng = engine(tmp_path, max_num_batched_tokens=16)
    outs = eng.generate(prompts, SamplingParams(max_tokens=15, **GREEDY))
    for p, o in zip(prompts, outs, strict=True):
        hf = ref.generate(torch.tensor([p]), max_new_tokens=15, min_new_tokens=15, do_sample=False, pad_token_id=0)
        assert o.outputs[0].token_ids == hf[0, len(p):].tolist()


def test_engine_with_triton_kernels_equals_reference(tiny_ckpt, monkeypatch):
    """The Triton kernels inside the engine (Triton's interpreter on CPU, the real compiler on a GPU)."""
    pytest.importorskip("triton")
    from shusheng.deploy import model_runner, paged_attention
    from shusheng.deploy.kernels.gemv import MAX_ROWS, candidates, gemv

    def linear(x, w, b=None):  # the decode steps' skinny GEMMs too (on a GPU only fp16/bf16 take them)
        if x.shape[0] > MAX_ROWS:
            return torch.nn.functional.linear(x, w, b)
        return gemv(x, w, b, config=candidates(x.shape[0])[0])  # rows kernel at 1 row, tl.dot above

    monkeypatch.setattr(model_runner, "ops_for", lambda device: paged_attention.TritonOps)
    monkeypatch.setattr(paged_attention.TritonOps, "linear", staticmethod(linear))
    eng = engine(tiny_ckpt, max_num_batched_tokens=24, enforce_eager=True)
    shared = prompts_of([20], seed=10)[0]
    check(eng, tiny_ckpt, [shared + [3], prompts_of([9], seed=11)[0], shared + [4, 5]], max_tokens=6)


def test_max_tokens_none_stops_at_the_context_window(tiny_ckpt):
    eng = engine(tiny_ckpt, max_model_len=32)
    out = eng.generate([prompts_of([20], seed=12)[0]], SamplingParams(max_tokens=None, **GREEDY))[0].outputs[0]
    assert len(out.token_ids) == 12 and out.finish_reason == "length"


def test_overlapped_steps_equal_one_step_at_a_time(tiny_ckpt):
    """async_scheduling (a step's tokens read back after the next step is launched) changes no output: seeded
    sampling with n=3, stop strings, logprobs, preemption in a small pool, and a request that stops early."""
    prompts = prompts_of([20, 25, 9, 30], seed=7)
    params = [SamplingParams(max_tokens=14, temperature=0.9, top_p=0.9, seed=11, n=3),
              SamplingParams(max_tokens=16, logprobs=2, **GREEDY),
              SamplingParams(max_tokens=12, temperature=0.7, top_k=20, seed=3, stop=["ab"]),
              SamplingParams(max_tokens=3, **GREEDY)]

    def run(async_scheduling):
        eng = engine(tiny_ckpt, num_kv_blocks=6, async_scheduling=async_scheduling)
        outs = eng.generate(prompts, params)
        assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks
        assert eng.scheduler.num_preemptions > 0
        return [[(c.token_ids, c.text, c.finish_reason, c.logprobs) for c in o.outputs] for o in outs]

    overlapped, serial = run(True), run(False)
    assert [[c[:3] for c in o] for o in overlapped] == [[c[:3] for c in o] for o in serial]
    lp = [[(e["logprob"], *(x for _, x in e["top"])) for e in c[3]] for c in (overlapped[1][0], serial[1][0])]
    assert [e["top"][0][0] for e in overlapped[1][0][3]] == overlapped[1][0][0]  # greedy: the top choice
    torch.testing.assert_close(torch.tensor(lp[0]), torch.tensor(lp[1]))  # batch shapes differ: float noise
    eng = engine(tiny_ckpt)
    eng.add_request(prompts[0], SamplingParams(max_tokens=5, **GREEDY))
    assert eng.step() == []  # the prefill's token is read back by the next call
    assert eng.has_unfinished() and eng._inflight is not None


def test_final_only_text_equals_streamed_text(tiny_ckpt):
    """step(final_only=True) detokenizes a request without stop strings once at its end: the same text, token ids
    and finish reasons as detokenizing token by token (eos stops, length stops, the stop token's text kept)."""
    prompts = prompts_of([12, 30, 7, 21, 16], seed=9)
    params = [SamplingParams(max_tokens=40, temperature=1.0, seed=s, skip_special_tokens=s % 2 == 0,
                             stop_token_ids=list(range(3, 80)) if s in (1, 3) else [], min_tokens=2 * (s == 3),
                             include_stop_str_in_output=s == 3) for s in range(5)]

    def finals(final_only):
        eng = engine(tiny_ckpt)
        ids = [eng.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
        done = {}
        while eng.has_unfinished():
            for out in eng.step(final_only=final_only):
                if out.finished:
                    done[out.request_id] = [(c.text, c.token_ids, c.finish_reason) for c in out.outputs]
        return [done[i] for i in ids]

    deferred, streamed = finals(True), finals(False)
    assert deferred == streamed
    assert {c[2] for o in streamed for c in o} == {"stop", "length"}
