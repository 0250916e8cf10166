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


def test_wire_outputs_rebuild_to_the_delta_engines(tiny_ckpt):
    """`wire_outputs` (the engine process's mode) makes each step output, and an abort's final one, as the pipe's
    tuple directly. Rebuilt, they equal a delta engine's outputs put through `delta`, step for step (metrics aside:
    two clocks), stop tokens (their text dropped or kept), n=2, log-probs, prompt log-probs, a stop string and an
    abort included."""
    dlt, wire = (LLMEngine(EngineConfig.from_kwargs(str(tiny_ckpt), device="cpu")) for _ in range(2))
    greedy = dlt.generate(["hello"], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))[0]
    stop_id = greedy.outputs[0].token_ids[3]
    dlt.delta_outputs = wire.delta_outputs = wire.wire_outputs = True
    requests = {
        "n2": ("hello world", SamplingParams(max_tokens=7, temperature=0.8, seed=1, n=2, logprobs=2)),
        "echo": ("the cat sat on", SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=1, logprobs=0)),
        "stop": ("a b c d e f", SamplingParams(max_tokens=12, temperature=0.0, stop=["e"], ignore_eos=True)),
        "stoptok": ("hello", SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=[stop_id])),
        "stoptok+": ("hello", SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=[stop_id],
                                             include_stop_str_in_output=True, skip_special_tokens=False)),
        "aborted": ("x y z", SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)),
    }
    from_dlt, from_wire = OutputRebuilder(), OutputRebuilder()
    for rid, (prompt, params) in requests.items():
        for eng, rebuilder in ((dlt, from_dlt), (wire, from_wire)):
            eng.add_request(prompt, params, request_id=rid)
            rebuilder.add(rid, prompt, eng.encode_prompt(prompt))
    started, compared, step, finals = set(), 0, 0, {}
    while dlt.has_unfinished():
        outs, wouts = dlt.step(), wire.step()
        if step == 4:
            outs.append(dlt.abort("aborted"))
            wouts.append(wire.abort("aborted"))
        assert all(type(w) is tuple for w in wouts)
        step += 1
        for out, w in zip(outs, wouts, strict=True):
            want = from_dlt.rebuild(over_the_pipe(out, out.request_id not in started))
            started.add(out.request_id)
            got = from_wire.rebuild(pickle.loads(pickle.dumps(w)))
            assert set(got.metrics) == {"arrival", "first_token", "now"}
            got.metrics = want.metrics
            assert got == want
            if got.finished:
                finals[got.request_id] = got
            compared += 1
    assert compared > 15 and not wire.has_unfinished() and len(from_wire) == 0
    a, b = finals["stoptok"].outputs[0], finals["stoptok+"].outputs[0]
    assert a.finish_reason == b.finish_reason == "stop" and a.stop_reason == stop_id and a.token_ids[-1] == stop_id
    assert b.text.startswith(a.text) and b.text.endswith(wire.tokenizer.decode([stop_id]))  # its text: dropped, kept


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
