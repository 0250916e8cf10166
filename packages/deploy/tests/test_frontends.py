"""The async wrapper (threads and asyncio), the offline pipeline, and the CLI."""

import asyncio
import threading

import pytest

from shusheng.deploy import AsyncEngine, EngineConfig, LLMEngine, SamplingParams, pipeline
from shusheng.deploy.cli import main

GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def async_engine(tiny_ckpt):
    eng = AsyncEngine(LLMEngine(EngineConfig(model=str(tiny_ckpt), device="cpu")))
    yield eng
    eng.shutdown()


def test_streams_from_threads_match_offline(tiny_ckpt, async_engine):
    offline = LLMEngine(EngineConfig(model=str(tiny_ckpt), device="cpu"))
    prompts = [[5, 6, 7], [9] * 20, [11, 12]]
    expected = [o.outputs[0].token_ids for o in offline.generate(prompts, SamplingParams(max_tokens=9, **GREEDY))]
    results = {}

    def worker(i):
        stream = async_engine.add_request(prompts[i], SamplingParams(max_tokens=9, **GREEDY))
        deltas = []
        for out in stream:
            deltas += out.outputs[0].delta_token_ids
            final = out
        results[i] = (deltas, final.outputs[0].token_ids, final.finished)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(3):
        deltas, tokens, finished = results[i]
        assert finished and tokens == expected[i] and deltas == tokens  # deltas add up to the whole


def test_asyncio_stream_and_abort(async_engine):
    async def run():
        texts = []
        async for out in async_engine.generate([5, 6, 7], SamplingParams(max_tokens=6, **GREEDY)):
            texts.append(out.outputs[0].delta_text)
        assert out.finished and out.outputs[0].finish_reason == "length"
        stream = async_engine.add_request([8, 9], SamplingParams(max_tokens=200, **GREEDY), request_id="long")
        got = []
        async for out in stream:
            got.append(out)
            if len(got) == 2:
                async_engine.abort("long")
        assert got[-1].finished and got[-1].outputs[0].finish_reason == "abort"
        assert len(got[-1].outputs[0].token_ids) < 200
        return "".join(texts), out

    text, _ = asyncio.run(run())
    assert isinstance(text, str)


def test_bad_request_fails_in_the_callers_thread(async_engine):
    with pytest.raises(ValueError, match="prompt is empty"):
        async_engine.add_request([], SamplingParams())


def test_pipeline_renders_conversations(tiny_ckpt):
    pipe = pipeline(str(tiny_ckpt), device="cpu")
    conv = [{"role": "user", "content": "Hello there"}]
    out = pipe(conv, SamplingParams(max_tokens=5, **GREEDY))
    expected_prompt = pipe.tokenizer.encode(pipe.render(conv))
    assert out.prompt_token_ids == expected_prompt and expected_prompt[0] == pipe.tokenizer.bos_id
    both = pipe(["plain text", conv], {"max_tokens": 5, **GREEDY})
    assert len(both) == 2 and both[1].outputs[0].token_ids == out.outputs[0].token_ids
    with pytest.raises(ValueError, match="not a string, a list of token ids or a list of message dicts"):
        pipe([3.5])


def test_cli_generate_and_errors(tiny_ckpt, capsys, tmp_path):
    assert main(["generate", str(tiny_ckpt), "--prompt", "The quick", "--max-tokens", "4", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() != ""
    assert main(["generate", str(tiny_ckpt), "--prompt", "Hi", "--chat", "--stream", "--max-tokens", "3",
                 "--device", "cpu"]) == 0
    assert main(["generate", str(tmp_path / "missing"), "--prompt", "x", "--device", "cpu"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["bench", str(tiny_ckpt), "--num-requests", "4", "--input-len", "5:9", "--output-len", "3",
                 "--device", "cpu"]) == 0
    assert "output tokens/s" in capsys.readouterr().out
    assert main(["bench", str(tiny_ckpt), "--input-len", "9:5", "--device", "cpu"]) == 2
