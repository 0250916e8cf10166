"""The engine in its own process: same outputs as in-process, calls work, a dead engine process fails cleanly."""

import asyncio
import os
import signal

import pytest

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams
from shusheng.deploy.engine_process import ProcessAsyncEngine

PROMPTS = ["hello world", "the cat sat on", "a b c d e f"]


@pytest.fixture(scope="module")
def process_engine(tiny_ckpt):
    engine = ProcessAsyncEngine(EngineConfig.from_kwargs(str(tiny_ckpt), device="cpu", dtype="float32"))
    yield engine
    engine.shutdown()


def test_streams_equal_the_in_process_engine(tiny_ckpt, process_engine):
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    ref = LLMEngine(EngineConfig.from_kwargs(str(tiny_ckpt), device="cpu", dtype="float32")).generate(PROMPTS, params)

    async def collect(prompt):
        text, ids, last = "", [], None
        async for out in process_engine.generate(prompt, params):
            text += out.outputs[0].delta_text
            ids += out.outputs[0].delta_token_ids
            last = out
        return text, ids, last

    async def main():
        return await asyncio.gather(*(collect(p) for p in PROMPTS))

    for (text, ids, last), r in zip(asyncio.run(main()), ref, strict=True):
        assert ids == r.outputs[0].token_ids and text == r.outputs[0].text
        assert last.finished and last.outputs[0].finish_reason == "length"
    assert process_engine.num_unfinished == 0


def test_full_outputs_through_the_pipe_equal_the_in_process_engine(tiny_ckpt, process_engine):
    """Outputs cross the pipe as deltas: the final outputs (n=2, logprobs, prompt logprobs, a stop string) are
    rebuilt equal to the in-process engine's, and the API side keeps nothing afterwards."""
    params = [SamplingParams(max_tokens=8, temperature=0.9, seed=5, n=2, logprobs=2),
              SamplingParams(max_tokens=6, temperature=0.0, prompt_logprobs=2, logprobs=0),
              SamplingParams(max_tokens=10, temperature=0.0, stop=["e"], ignore_eos=True)]
    ref = LLMEngine(EngineConfig.from_kwargs(str(tiny_ckpt), device="cpu", dtype="float32")).generate(PROMPTS, params)

    async def last(prompt, p):
        final = None
        async for out in process_engine.generate(prompt, p):
            final = out
        return final

    async def main():
        return await asyncio.gather(*(last(q, p) for q, p in zip(PROMPTS, params, strict=True)))

    def numbers(entries):  # logprobs may differ in the last bits between batch shapes
        return [x for e in entries if e for x in (e["logprob"], *(v for _, v in e["top"]))]

    def ids(entries):
        return [(e["token_id"], [i for i, _ in e["top"]]) for e in entries if e]

    for got, r in zip(asyncio.run(main()), ref, strict=True):
        assert [(c.text, c.token_ids, c.finish_reason) for c in got.outputs] == \
            [(c.text, c.token_ids, c.finish_reason) for c in r.outputs]
        for g, e in [(c.logprobs, d.logprobs) for c, d in zip(got.outputs, r.outputs, strict=True)] + \
                [(got.prompt_logprobs, r.prompt_logprobs)]:
            assert (g is None) == (e is None)
            if g is not None:
                assert len(g) == len(e) and ids(g) == ids(e) and numbers(g) == pytest.approx(numbers(e), rel=1e-4)
        assert got.prompt_token_ids == r.prompt_token_ids
    assert len(process_engine._rebuilder) == 0


def test_a_slow_consumer_gets_merged_outputs_and_an_abort_still_ends_its_stream(process_engine):
    """Outputs that pile up while the consumer sleeps come merged into fewer items, with nothing lost; an explicit
    abort still ends the stream with a final "abort" output; a consumer that leaves early (the generator closed)
    leaves nothing behind in the API process."""
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)

    async def slow():
        items, ids = 0, []
        async for out in process_engine.generate("hello world", params):
            items += 1
            ids += out.outputs[0].delta_token_ids
            assert out.outputs[0].token_ids == ids  # the merged deltas add up to the snapshot
            await asyncio.sleep(0.05)
        return items, ids

    async def aborted():
        stream = process_engine.add_request("the cat sat on", SamplingParams(max_tokens=200, temperature=0.0,
                                                                             ignore_eos=True), request_id="ab")
        got = []
        async for out in stream:
            got.append(out)
            if len(got) == 2:
                process_engine.abort("ab")
        return got

    async def leaver():
        async for _ in process_engine.generate("a b c", SamplingParams(max_tokens=200, ignore_eos=True)):
            break

    async def main():
        return await asyncio.gather(slow(), aborted(), leaver())

    (items, ids), got, _ = asyncio.run(main())
    assert len(ids) == 40 and items < 40
    assert got[-1].finished and got[-1].outputs[0].finish_reason == "abort"
    for _ in range(100):  # the abandoned request's abort reaches the engine process and comes back
        if process_engine.num_unfinished == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert process_engine.num_unfinished == 0 and len(process_engine._rebuilder) == 0


def test_validation_happens_in_the_api_process(process_engine):
    limit = process_engine.engine.max_model_len
    with pytest.raises(ValueError, match="maximum context length"):
        process_engine.add_request("hi", SamplingParams(max_tokens=limit + 1))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        process_engine.add_request([10**9], SamplingParams(max_tokens=2))


def test_calls_run_in_the_engine_process(process_engine):
    # functions shipped to the engine process must pickle: module-level ones (here LLMEngine's own methods)
    stats = asyncio.run(process_engine.run(LLMEngine.stats))
    assert stats["running"] == 0 and 0.0 <= stats["kv_cache_usage"] <= 1.0
    vectors = asyncio.run(process_engine.run(LLMEngine.embed, ["hello world", "a b"]))
    assert vectors.shape[0] == 2
    with pytest.raises(ValueError, match="input 0 is empty"):
        asyncio.run(process_engine.run(LLMEngine.embed, [[]]))


def test_a_dead_engine_process_fails_every_stream(tiny_ckpt):
    engine = ProcessAsyncEngine(EngineConfig.from_kwargs(str(tiny_ckpt), device="cpu", dtype="float32"))
    try:
        async def main():
            stream = engine.add_request("hello", SamplingParams(max_tokens=400, ignore_eos=True))
            os.kill(engine._proc.pid, signal.SIGKILL)
            async for _ in stream:
                pass

        with pytest.raises(RuntimeError, match="engine process"):
            asyncio.run(main())
        assert engine.error is not None
        with pytest.raises(RuntimeError, match="stopped after an error"):
            engine.add_request("again")
    finally:
        engine.shutdown()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="pinning needs Linux and two or more CPUs")
def test_engine_cpus_pin_the_step_loop_and_leave_the_rest_to_the_api_process(tiny_ckpt):
    config = EngineConfig.from_kwargs(str(tiny_ckpt), device="cpu", dtype="float32")
    allowed = os.sched_getaffinity(0)
    mine = {max(allowed)}
    try:
        engine = ProcessAsyncEngine(config, engine_cpus=mine)
        try:
            pid = engine._proc.pid
            assert os.sched_getaffinity(0) == allowed - mine  # this (the API) process
            assert os.sched_getaffinity(pid) == mine  # the engine process's main thread: the step loop
            others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
            assert any(os.sched_getaffinity(t) == allowed - mine for t in others)  # e.g. the sender thread

            async def one():
                return [o async for o in engine.add_request("hello world", SamplingParams(max_tokens=4))]

            assert asyncio.run(one())[-1].finished
        finally:
            engine.shutdown()
    finally:
        os.sched_setaffinity(0, allowed)
    with pytest.raises(ValueError, match="leave none for the API process"):
        ProcessAsyncEngine(config, engine_cpus=allowed)
    with pytest.raises(ValueError, match="are not among this process's CPUs"):
        ProcessAsyncEngine(config, engine_cpus={max(allowed) + 1000})
    assert os.sched_getaffinity(0) == allowed  # a refused list changes nothing


def test_cpu_lists_parse_or_name_the_problem():
    from shusheng.deploy.engine_process import parse_cpu_list

    assert parse_cpu_list("3") == {3} and parse_cpu_list("0,2") == {0, 2} and parse_cpu_list("0-3,8") == {0, 1, 2, 3, 8}
    for bad in ("", "a", "3-1", "1,,2", "-2"):
        with pytest.raises(ValueError, match="bad CPU list"):
            parse_cpu_list(bad)


def test_serve_refuses_bad_engine_cpus_in_one_line(tiny_ckpt, capsys):
    from shusheng.deploy.cli import main as cli_main

    assert cli_main(["serve", str(tiny_ckpt), "--device", "cpu", "--engine-cpus", "2-1"]) == 2
    assert capsys.readouterr().err == ("shusheng-deploy: error: bad CPU list '2-1': use ids and ranges such as 3, "
                                       "0,2 or 12-15\n")
    assert cli_main(["serve", str(tiny_ckpt), "--device", "cpu", "--engine-cpus", "0", "--engine-in-thread"]) == 2
    assert "cannot be used with --engine-in-thread" in capsys.readouterr().err
