"""Tests of shusheng.deploy.sampling_params and shusheng.deploy.sampler."""

import dataclasses
import math

import pytest
import torch

from shusheng.deploy.sampler import (
    Sampler,
    SamplingTensors,
    apply_penalties,
    apply_top_k_top_p,
    argmax_rows,
    make_generator,
    prompt_logprobs,
)
from shusheng.deploy.sampling_params import SamplingParams

sampler = Sampler()


def run(logits, params, outputs=None, prompts=None, eos_ids=(), generators=None):
    B, V = logits.shape
    outputs = outputs if outputs is not None else [[] for _ in range(B)]
    prompts = prompts if prompts is not None else [[0] for _ in range(B)]
    t = SamplingTensors.from_params(params, outputs, prompts, logits.device, V, eos_ids)
    if generators is None:
        generators = {i: make_generator(p.seed, logits.device) for i, p in enumerate(params) if p.seed is not None}
    return sampler(logits, t, generators)


# -- SamplingParams ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, r"n must be >= 1, got 0"),
        ({"temperature": -1}, r"temperature must be >= 0, got -1"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
        ({"top_k": -2}, r"top_k must be -1 or 0 \(off\) or >= 1, got -2"),
        ({"min_p": 1.1}, r"min_p must be in \[0, 1\], got 1.1"),
        ({"repetition_penalty": 0.0}, r"repetition_penalty must be > 0, got 0.0"),
        ({"presence_penalty": 2.5}, r"presence_penalty must be in \[-2, 2\], got 2.5"),
        ({"frequency_penalty": -3}, r"frequency_penalty must be in \[-2, 2\], got -3"),
        ({"seed": 1.5}, r"seed must be an int or None, got 1.5"),
        ({"max_tokens": 0}, r"max_tokens must be >= 1 or None, got 0"),
        ({"min_tokens": -1}, r"min_tokens must be >= 0, got -1"),
        ({"min_tokens": 5, "max_tokens": 4}, r"min_tokens must be <= max_tokens \(4\), got 5"),
        ({"stop": ["ok", ""]}, r"stop must hold non-empty strings"),
        ({"stop_token_ids": [-1]}, r"stop_token_ids must hold token ids >= 0"),
        ({"logprobs": 21}, r"logprobs must be in \[0, 20\] or None, got 21"),
        ({"prompt_logprobs": -1}, r"prompt_logprobs must be in \[0, 20\] or None, got -1"),
    ],
)
def test_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_params_defaults_and_normalization():
    p = SamplingParams(stop="###", stop_token_ids=(7,), max_tokens=None, min_tokens=100)
    assert p.stop == ["###"] and p.stop_token_ids == [7]
    assert not p.greedy and SamplingParams(temperature=0).greedy
    assert p.all_stop_token_ids([2, 7]) == [2, 7]
    assert SamplingParams(stop_token_ids=[7], ignore_eos=True).all_stop_token_ids([2]) == [7]
    d = SamplingParams()
    assert (d.n, d.temperature, d.top_p, d.top_k, d.min_p, d.max_tokens, d.logprobs) == (1, 1.0, 1.0, 0, 0.0, 16, None)


# -- greedy, seeds -------------------------------------------------------------------------------------------------


def test_greedy_is_exact_argmax_in_a_mixed_batch():
    torch.manual_seed(0)
    logits = torch.randn(6, 1000) * 3
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.8, top_k=5), SamplingParams(temperature=0),
              SamplingParams(seed=3), SamplingParams(temperature=0, top_p=0.1, seed=1), SamplingParams(min_p=0.5)]
    out = run(logits, params)
    greedy_rows = [0, 2, 4]
    assert torch.equal(out.token_ids[greedy_rows], logits[greedy_rows].argmax(-1))
    all_greedy = run(logits, [SamplingParams(temperature=0)] * 6)
    assert torch.equal(all_greedy.token_ids, logits.argmax(-1))
    assert run(logits.bfloat16(), [SamplingParams(temperature=0)] * 6).token_ids.dtype == torch.long


def _seeded_tokens(seed, row, batch, steps=12, V=500):
    """`steps` tokens of a seeded request sitting at `row` of a batch of `batch` (others: various params)."""
    torch.manual_seed(1234 + batch)  # the other rows' logits and the global RNG differ between batch layouts
    gen = make_generator(seed, "cpu")
    others = [SamplingParams(), SamplingParams(temperature=0), SamplingParams(seed=99, top_k=50),
              SamplingParams(top_p=0.9, min_p=0.05)]
    tokens = []
    for step in range(steps):
        g = torch.Generator().manual_seed(step)  # the seeded row's logits depend on the step only
        mine = torch.randn(V, generator=g) * 2
        logits = torch.randn(batch, V)
        logits[row] = mine
        params = [others[i % len(others)] for i in range(batch)]
        params[row] = SamplingParams(temperature=0.9, top_p=0.95, seed=seed)
        generators = {i: make_generator(99 + step, "cpu") for i, p in enumerate(params) if p.seed is not None}
        generators[row] = gen
        tokens.append(int(run(logits, params, generators=generators).token_ids[row]))
    return tokens


def test_seed_reproducible_alone_or_batched():
    alone = _seeded_tokens(seed=42, row=0, batch=1)
    assert alone == _seeded_tokens(seed=42, row=0, batch=1)
    assert alone == _seeded_tokens(seed=42, row=3, batch=7)
    assert alone == _seeded_tokens(seed=42, row=1, batch=4)
    assert alone != _seeded_tokens(seed=43, row=0, batch=1)
    assert len(set(alone)) > 1  # a real sample, not a constant


def test_unseeded_rows_follow_the_global_rng():
    logits = torch.randn(8, 300)
    torch.manual_seed(5)
    a = run(logits, [SamplingParams()] * 8).token_ids
    torch.manual_seed(5)
    assert torch.equal(a, run(logits, [SamplingParams()] * 8).token_ids)


def test_seeded_row_without_generator_raises():
    logits = torch.randn(2, 10)
    with pytest.raises(ValueError, match=r"rows \[1\] have a seed but no generator"):
        run(logits, [SamplingParams(), SamplingParams(seed=1)], generators={})


# -- top-k / top-p / min-p: statistics -----------------------------------------------------------------------------

# A fixed distribution over 8 tokens, shuffled so that vocabulary order differs from probability order.
PROBS = {5: 0.30, 2: 0.20, 7: 0.15, 0: 0.12, 3: 0.10, 6: 0.07, 1: 0.04, 4: 0.02}
LOGITS = torch.tensor([math.log(PROBS[i]) for i in range(8)])


def reference_allowed(temperature, top_k, top_p, min_p):
    """Plain-Python reference: the allowed ids and their renormalized probabilities."""
    weights = {i: PROBS[i] ** (1 / temperature) for i in PROBS}
    order = sorted(weights, key=weights.get, reverse=True)
    total = sum(weights.values())
    probs = [(i, weights[i] / total) for i in order]
    if top_k > 0:
        probs = probs[:top_k]
    if top_p < 1:
        mass = sum(p for _, p in probs)
        kept, above = [], 0.0
        for i, p in probs:
            if above >= top_p:
                break
            kept.append((i, p))
            above += p / mass
        probs = kept
    if min_p > 0:
        best = probs[0][1]
        probs = [(i, p) for i, p in probs if p >= min_p * best]
    mass = sum(p for _, p in probs)
    return {i: p / mass for i, p in probs}


CASES = [  # (temperature, top_k, top_p, min_p), number of allowed tokens
    ((1.0, 3, 1.0, 0.0), 3),
    ((1.0, 0, 0.6, 0.0), 3),  # masses above: 0, .30, .50 | .65
    ((1.0, -1, 1.0, 0.3), 5),  # threshold .09
    ((1.0, 5, 0.8, 0.45), 3),  # top-5, then its nucleus keeps 4, then min-p drops 0.12 < 0.45 * 0.30
    ((0.5, 4, 1.0, 0.0), 4),  # temperature first: probabilities squared
    ((2.0, 0, 0.55, 0.0), 4),  # flattened: masses above .207, .376, .522 | .653
    ((1.0, 0, 1.0, 0.0), 8),
]


def chi_square(counts, expected, n):
    return sum((counts[i] - n * p) ** 2 / (n * p) for i, p in expected.items())


@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize("case, num_allowed", CASES)
def test_filters_never_emit_excluded_tokens_and_match_frequencies(case, num_allowed, seeded):
    temperature, top_k, top_p, min_p = case
    expected = reference_allowed(temperature, top_k, top_p, min_p)
    assert len(expected) == num_allowed
    n = 8000
    torch.manual_seed(0)
    params = [SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                             seed=i if seeded else None) for i in range(n)]
    ids = run(LOGITS.expand(n, -1).contiguous(), params).token_ids
    counts = torch.bincount(ids, minlength=8).tolist()
    assert {i for i, c in enumerate(counts) if c} <= set(expected), f"excluded token sampled: {counts}"
    # chi-square with <= 7 degrees of freedom: 32 is beyond the 99.99th percentile
    assert chi_square(counts, expected, n) < 32, (counts, expected)


def test_top_k_larger_than_vocab_and_top_p_one_keep_everything():
    n = 4000
    torch.manual_seed(1)
    ids = run(LOGITS.expand(n, -1).contiguous(), [SamplingParams(top_k=100, top_p=1.0)] * n).token_ids
    counts = torch.bincount(ids, minlength=8).tolist()
    assert all(counts) and chi_square(counts, PROBS, n) < 32


def test_top_p_off_keeps_the_tail_despite_float_rounding():
    # over 150k tokens the float32 cumulative sum passes 1.0 before the last token; a row at 1.0 must keep them all
    torch.manual_seed(0)
    logits = torch.randn(2, 150_000) * 3
    filtered = apply_top_k_top_p(logits, None, torch.tensor([1.0, 0.9]))
    assert torch.isfinite(filtered[0]).all() and torch.equal(filtered[0], logits[0])
    assert torch.isinf(filtered[1]).any()


def test_top_k_candidates_path_equals_full_sort():
    torch.manual_seed(3)
    logits = torch.randn(4, 5000) * 2
    top_ks, top_ps = torch.tensor([1, 40, 7, 40]), torch.tensor([1.0, 0.9, 0.5, 0.99])
    full = apply_top_k_top_p(logits, top_ks, top_ps)
    assert torch.equal(apply_top_k_top_p(logits, top_ks, top_ps, max_top_k=40), full)
    assert torch.isfinite(full).sum(-1)[0] == 1 and torch.isfinite(full).sum(-1).max() <= 40
    t = SamplingTensors.from_params([SamplingParams(top_k=40), SamplingParams(top_k=7, top_p=0.5),
                                     SamplingParams(temperature=0)], [[]] * 3, [[]] * 3, "cpu", 5000)
    assert t.max_top_k == 40  # the greedy row does not count
    assert SamplingTensors.from_params([SamplingParams(top_k=40), SamplingParams()], [[]] * 2, [[]] * 2,
                                       "cpu", 5000).max_top_k is None


# -- penalties, min_tokens -----------------------------------------------------------------------------------------


def test_penalties_exact_values():
    logits = torch.tensor([[2.0, -1.0, 0.5, -0.5, 1.5]])
    params = [SamplingParams(temperature=0, repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)]
    t = SamplingTensors.from_params(params, [[2, 2, 3]], [[0, 1]], "cpu", 5)
    # repetition over prompt + output {0, 1, 2, 3}: 2/2, -1*2, .5/2, -.5*2; token 4 unseen
    # frequency (counts 2: x2, 3: x1) and presence (2, 3) over the output only
    expected = [2.0 / 2, -1.0 * 2, 0.5 / 2 - 0.5 * 2 - 0.25, -0.5 * 2 - 0.5 * 1 - 0.25, 1.5]
    assert apply_penalties(logits, t).tolist() == [expected]
    assert run(logits, params, [[2, 2, 3]], [[0, 1]]).token_ids.tolist() == [4]  # unpenalized argmax would be 0


def test_presence_and_frequency_ignore_the_prompt():
    logits = torch.zeros(2, 4)
    params = [SamplingParams(presence_penalty=1.0), SamplingParams(frequency_penalty=-1.0)]
    t = SamplingTensors.from_params(params, [[1, 1], [3, 3, 3]], [[0, 2], [0, 1, 2]], "cpu", 4)
    assert t.prompt_tokens is None  # no repetition penalty: prompts not even copied
    assert apply_penalties(logits, t).tolist() == [[0, -1, 0, 0], [0, 0, 0, 3]]


def test_no_penalty_fields_without_penalties():
    t = SamplingTensors.from_params([SamplingParams(top_k=3)], [[1]], [[2]], "cpu", 8)
    assert t.presence_penalties is None and t.output_tokens is None and t.top_ps is None and t.top_ks is not None


def test_argmax_tensors_are_what_from_params_makes_for_argmax_only_rows():
    """The engine skips `from_params` when every row is `argmax_only`: `argmax()` must be what it would build,
    except that it also skips the chosen ids' log-probabilities (no row asked for them)."""
    plain = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.0, seed=3, top_k=5, top_p=0.5, min_p=0.1,
                                                             stop=["x"], ignore_eos=True, prompt_logprobs=2)]
    assert all(SamplingTensors.argmax_only(p) for p in plain)
    argmax = dataclasses.replace(SamplingTensors.argmax(), chosen_logprobs=True)
    assert SamplingTensors.from_params(plain, [[1, 2], []], [[3], [4]], "cpu", 10, [2]) == argmax
    for change in (dict(temperature=0.5), dict(repetition_penalty=1.1), dict(presence_penalty=0.5),
                   dict(frequency_penalty=-0.5), dict(min_tokens=2), dict(logprobs=0)):
        p = SamplingParams(**{"temperature": 0.0, **change})
        assert not SamplingTensors.argmax_only(p), change
        assert SamplingTensors.from_params([p], [[1]], [[3]], "cpu", 10, [2]) != argmax, change


def test_min_tokens_masks_eos_and_stop_ids():
    V, eos, stop = 10, 9, 7
    logits = torch.zeros(1, V)
    logits[0, eos], logits[0, stop], logits[0, 4] = 10.0, 9.0, 1.0
    under = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[stop])
    assert run(logits, [under], [[1, 2]], eos_ids=[eos]).token_ids.tolist() == [4]
    assert run(logits, [under], [[1, 2, 3]], eos_ids=[eos]).token_ids.tolist() == [eos]
    ignore = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[stop], ignore_eos=True)
    assert run(logits, [ignore], [[1]], eos_ids=[eos]).token_ids.tolist() == [eos]
    logits[0, eos] = -10.0
    assert run(logits, [ignore], [[1]], eos_ids=[eos]).token_ids.tolist() == [4]
    # sampled rows too: a flat distribution never yields a masked id
    n = 2000
    ids = run(torch.zeros(n, V), [SamplingParams(min_tokens=1, stop_token_ids=[stop])] * n,
              [[]] * n, eos_ids=[eos]).token_ids
    assert not ((ids == eos) | (ids == stop)).any() and len(set(ids.tolist())) == V - 2


# -- logprobs ------------------------------------------------------------------------------------------------------


def test_logprobs_are_raw_and_top_n_sorted():
    torch.manual_seed(2)
    logits = torch.randn(3, 50) * 2
    params = [SamplingParams(temperature=0.5, repetition_penalty=1.7, top_k=3, logprobs=5),
              SamplingParams(temperature=0, logprobs=0),
              SamplingParams(presence_penalty=2.0)]
    out = run(logits, params, [[1, 2], [3], [4, 4]], [[5], [6], [7]])
    ref = logits.log_softmax(-1)
    assert torch.allclose(out.logprobs, ref.gather(-1, out.token_ids[:, None])[:, 0])
    assert torch.equal(out.ranks, (ref > out.logprobs[:, None]).sum(-1) + 1)
    assert out.ranks[1] == 1  # greedy without penalties: the most likely token
    assert out.top_token_ids.shape == (3, 5)
    assert torch.equal(out.top_token_ids, ref.argsort(-1, descending=True)[:, :5])
    assert torch.equal(out.top_logprobs, ref.gather(-1, out.top_token_ids))
    assert (out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:]).all()


def test_chosen_logprob_without_logprobs_requested():
    logits = torch.randn(4, 30)
    out = run(logits, [SamplingParams()] * 4)
    assert out.ranks is None and out.top_token_ids is None
    assert torch.allclose(out.logprobs, logits.log_softmax(-1).gather(-1, out.token_ids[:, None])[:, 0])


def test_prompt_logprobs_exact():
    logits = torch.log(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]))
    out = prompt_logprobs(logits, [2, 1, 3], n=2)  # position 1 given [2]: uniform; position 2 given [2, 1]
    assert out.token_ids.tolist() == [1, 3]
    assert torch.allclose(out.logprobs, torch.tensor([math.log(0.25), math.log(0.4)]))
    assert out.ranks[1] == 1
    assert out.top_token_ids[1].tolist() == [3, 2]
    assert torch.allclose(out.top_logprobs[1], torch.tensor([math.log(0.4), math.log(0.3)]))
    chunked = prompt_logprobs(logits, [2, 1, 3], n=2, chunk_size=1)
    assert torch.equal(chunked.logprobs, out.logprobs) and torch.equal(chunked.top_token_ids, out.top_token_ids)
    no_top = prompt_logprobs(logits, torch.tensor([2, 1, 3]), n=0)
    assert no_top.top_token_ids is None and torch.equal(no_top.logprobs, out.logprobs)
    one = prompt_logprobs(logits[:1], [2], n=2)
    assert one.token_ids.numel() == 0 and one.logprobs.numel() == 0 and one.top_token_ids.shape == (0, 2)


def test_argmax_rows_equals_argmax_with_ties():
    g = torch.Generator().manual_seed(0)
    for B, V in [(1, 92544), (3, 1024), (8, 4096), (9, 4096), (2, 1000), (2, 37)]:
        x = torch.randn(B, V, generator=g).round(decimals=1)  # many ties at the maximum
        x[:, V // 2] = x.max(-1).values  # a tie far from the first maximum
        assert torch.equal(argmax_rows(x), x.argmax(-1)), (B, V)


def test_argmax_only_steps_skip_the_chosen_logprobs():
    logits = torch.randn(3, 64)
    out = Sampler()(logits, SamplingTensors.argmax())
    assert out.logprobs is None and torch.equal(out.token_ids, logits.argmax(-1))
