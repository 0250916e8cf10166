"""Step outputs shipped as deltas between processes rebuild to exactly the engine's own outputs."""

import copy
import pickle

import pytest

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams
from shusheng.deploy.output_deltas import OutputRebuilder, delta


def over_the_pipe(out, first):
    """What the API process receives of `out`: its delta, pickled and unpickled."""
    return pickle.loads(pickle.dumps(delta(out, first), protocol=pickle.HIGHEST_PROTOCOL))


def test_rebuilt_outputs_equal_the_engines(tiny_ckpt):
    eng = LLMEngine(EngineConfig.from_kwargs(str(tiny_ckpt), device="cpu"))
    requests = {
        "n2": ("hello world", SamplingParams(max_tokens=9, temperature=0.8, seed=1, n=2, logprobs=2)),
        "echo": ("the cat sat on", SamplingParams(max_tokens=5, temperature=0.0, prompt_logprobs=1, logprobs=0)),
        "stop": ("a b c d e f", SamplingParams(max_tokens=12, temperature=0.0, stop=["e"], ignore_eos=True)),
        "aborted": ("x y z", SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)),
    }
    rebuilder, started = OutputRebuilder(), set()
    for rid, (prompt, params) in requests.items():
        eng.add_request(prompt, params, request_id=rid)
        rebuilder.add(rid, prompt, eng.encode_prompt(prompt))
    compared, step, twice = 0, 0, 0
    while eng.has_unfinished():
        if step == 3:  # prompt logprobs: its prefill step is read back at once, after the overlapped step before
            # it, so one step() returns two outputs of each running request
            eng.add_request("late one", SamplingParams(max_tokens=3, prompt_logprobs=0), request_id="late")
            rebuilder.add("late", "late one", eng.encode_prompt("late one"))
        outs = eng.step()
        if step == 4:
            outs.append(eng.abort("aborted"))
        step += 1
        ids = [o.request_id for o in outs]
        twice += len(ids) > len(set(ids))
        expected_all = copy.deepcopy(outs)
        for out, expected in zip(outs, expected_all, strict=True):
            first = out.request_id not in started
            started.add(out.request_id)
            rebuilt = rebuilder.rebuild(over_the_pipe(out, first))
            assert rebuilt == expected
            compared += 1
    assert compared > 20 and twice and len(rebuilder) == 0  # every request finished and was dropped
    assert rebuilder.rebuild(over_the_pipe(expected, False)) is None  # unknown (finished) requests are ignored


def test_an_engine_making_deltas_rebuilds_to_the_snapshots(tiny_ckpt):
    """`delta_outputs` (the engine process's mode) skips the snapshots' list copies; rebuilt, its outputs equal a
    snapshot engine's, step for step (same seeds, same schedule)."""
    snap, dlt = (LLMEngine(EngineConfig.from_kwargs(str(tiny_ckpt), device="cpu")) for _ in range(2))
    dlt.delta_outputs = True
    requests = {
        "n2": ("hello world", SamplingParams(max_tokens=7, temperature=0.8, seed=1, n=2, logprobs=2)),
        "echo": ("the cat sat on", SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=1, logprobs=0)),
        "stop": ("a b c d e f", SamplingParams(max_tokens=12, temperature=0.0, stop=["e"], ignore_eos=True)),
        "aborted": ("x y z", SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)),
    }
    rebuilder, started = OutputRebuilder(), set()
    for rid, (prompt, params) in requests.items():
        for eng in (snap, dlt):
            eng.add_request(prompt, params, request_id=rid)
        rebuilder.add(rid, prompt, dlt.encode_prompt(prompt))
    compared, step = 0, 0
    while snap.has_unfinished():
        outs, douts = snap.step(), dlt.step()
        if step == 4:
            outs.append(snap.abort("aborted"))
            douts.append(dlt.abort("aborted"))
        step += 1
        assert all(not d.prompt_token_ids and d.prompt is None for d in douts)  # deltas: no prompt
        assert all(not c.token_ids and not c.text for d in douts for c in d.outputs)  # nor the lists so far
        for out, d in zip(outs, douts, strict=True):
            first = d.request_id not in started
            started.add(d.request_id)
            rebuilt = rebuilder.rebuild(over_the_pipe(d, first))
            rebuilt.metrics = out.metrics  # (two engines: their clocks differ)
            assert rebuilt == out
            compared += 1
    assert compared > 15 and not dlt.has_unfinished() and len(rebuilder) == 0


def test_wire_outputs_are_the_tuples_the_outbox_made(tiny_ckpt):
    """`wire_outputs` (the engine process's mode) makes each step output as `delta`'s tuple directly: the same
    tuples, step for step, as a delta engine's outputs put through `delta` (metrics aside: two clocks). An abort's
    final output stays a RequestOutput, which the outbox converts as before."""
    dlt, wire = (LLMEngine(EngineConfig.from_kwargs(str(tiny_ckpt), device="cpu")) for _ in range(2))
    dlt.delta_outputs = wire.delta_outputs = wire.wire_outputs = True
    requests = {
        "n2": ("hello world", SamplingParams(max_tokens=7, temperature=0.8, seed=1, n=2, logprobs=2)),
        "echo": ("the cat sat on", SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=1, logprobs=0)),
        "stop": ("a b c d e f", SamplingParams(max_tokens=12, temperature=0.0, stop=["e"], ignore_eos=True)),
        "aborted": ("x y z", SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)),
    }
    for rid, (prompt, params) in requests.items():
        for eng in (dlt, wire):
            eng.add_request(prompt, params, request_id=rid)
    started, compared, step = set(), 0, 0
    while dlt.has_unfinished():
        outs, wouts = dlt.step(), wire.step()
        assert all(type(w) is tuple for w in wouts)
        if step == 4:
            outs.append(dlt.abort("aborted"))
            aborted = wire.abort("aborted")
            assert type(aborted) is not tuple and aborted.finished
            wouts.append(delta(aborted, "aborted" not in started))
        step += 1
        for out, w in zip(outs, wouts, strict=True):
            want = delta(out, out.request_id not in started)
            started.add(out.request_id)
            assert w[:3] + w[4:] == want[:3] + want[4:]
            assert set(w[3]) == {"arrival", "first_token", "now"}
            compared += 1
    assert compared > 15 and not wire.has_unfinished()


def test_a_prefix_view_stays_the_snapshot_it_was():
    from shusheng.deploy.output_deltas import Prefix

    items = [10, 11, 12]
    view = Prefix(items, 3)
    items.extend([13, 14])  # later deltas extend the list, not the view
    assert len(view) == 3 and list(view) == [10, 11, 12] and view == [10, 11, 12] and [10, 11, 12] == view
    assert view[-1] == 12 and view[0] == 10 and view[1:] == [11, 12] and view[-2:] == [11, 12] and view[5:] == []
    assert view != [10, 11, 12, 13] and view == Prefix(items, 3) and bool(Prefix(items, 0)) is False
    for bad in (3, -4):
        with pytest.raises(IndexError):
            view[bad]
    assert repr(view) == "[10, 11, 12]"
