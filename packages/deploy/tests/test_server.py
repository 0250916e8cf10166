"""Acceptance (issue 4): the real server (uvicorn on a free localhost port) driven by the official openai client."""

import asyncio
import contextlib
import json
import socket
import threading
import time

import httpx
import pytest
import torch

from shusheng.deploy import AsyncEngine, EngineConfig, LLMEngine
from shusheng.deploy.server import build_app
from shusheng.model import generate, load_pretrained, load_tokenizer
from shusheng.model.chat import render

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@contextlib.contextmanager
def running_server(ckpt, api_keys=None, max_queue=1024, **engine_kw):
    engine_kw.setdefault("device", "cpu")
    engine = AsyncEngine(LLMEngine(EngineConfig(model=str(ckpt), **engine_kw)))
    app = build_app(engine, "tiny", api_keys=api_keys, max_queue=max_queue)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        time.sleep(0.05)
    try:
        yield url, engine
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(tiny_ckpt):
    with running_server(tiny_ckpt, api_keys=["sk-test"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="sk-test", max_retries=0)


def reference_text(ckpt, prompt_text, max_tokens, skip_special=True):
    model, tok = load_pretrained(ckpt), load_tokenizer(ckpt)
    ids = tok.encode(prompt_text)
    out = generate(model, ids, max_new_tokens=max_tokens, stop_ids=tok.stop_ids).token_ids[0]
    out = [t for t in out if t not in tok.stop_ids]
    return tok.decode(out, skip_special_tokens=skip_special)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(server[0] + "/health").json() == {"status": "ok"}


def test_greedy_chat_equals_reference_and_stream_equals_non_stream(tiny_ckpt, client):
    resp = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=12)
    text = resp.choices[0].message.content
    assert text == reference_text(tiny_ckpt, render("internlm2", MESSAGES), 12)
    assert resp.usage.completion_tokens == 12 or resp.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.total_tokens == resp.usage.total_tokens


def test_completions_n_stop_logprobs_seed(client):
    free = client.completions.create(model="tiny", prompt="Paged attention stores", max_tokens=16, temperature=0,
                                     extra_body={"ignore_eos": True})
    text = free.choices[0].text
    stop = text[4:10]
    cut = client.completions.create(model="tiny", prompt="Paged attention stores", max_tokens=16, temperature=0,
                                    stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Paged attention stores", max_tokens=16, temperature=0, stop=[stop], stream=True,
        extra_body={"ignore_eos": True}) if c.choices)
    assert streamed == cut.choices[0].text  # no stop text leaks while streaming
    two = client.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=5, n=2, temperature=1.0, seed=3)
    assert [c.index for c in two.choices] == [0, 1]
    again = client.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=5, n=2, temperature=1.0, seed=3)
    assert [c.text for c in again.choices] == [c.text for c in two.choices]
    lp = client.completions.create(model="tiny", prompt="hello", max_tokens=3, temperature=0, logprobs=2)
    logprobs = lp.choices[0].logprobs
    assert len(logprobs.token_logprobs) == 3 and all(len(t) <= 2 for t in logprobs.top_logprobs)


def test_echo_prompt_logprobs_equal_the_model(tiny_ckpt, client):
    prompt = [1, 40, 50, 60, 70, 80]
    resp = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    lps = resp.choices[0].logprobs.token_logprobs
    assert lps[0] is None and len(lps) == len(prompt)
    with torch.no_grad():
        ref = load_pretrained(tiny_ckpt)(torch.tensor([prompt]))[0].log_softmax(-1)
    for t in range(1, len(prompt)):
        assert lps[t] == pytest.approx(ref[t - 1, prompt[t]].item(), abs=1e-4)
    assert resp.usage.completion_tokens == 0


def test_chat_logprobs_and_embeddings(client):
    resp = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=4,
                                          logprobs=True, top_logprobs=2)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens and len(content[0].top_logprobs) == 2
    emb = client.embeddings.create(model="tiny", input=["hello world", "quick fox"])
    vecs = [d.embedding for d in emb.data]
    assert len(vecs) == 2 and len(vecs[0]) == 64
    assert sum(v * v for v in vecs[0]) == pytest.approx(1.0, abs=1e-4)


def test_errors_are_openai_shaped(server, client):
    url = server[0]
    auth = {"Authorization": "Bearer sk-test"}
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json",
                   headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/chat/completions", content=b"plain words", headers=auth)
    assert r.status_code == 400 and "must be a JSON object" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": -1}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(url + "/v1/completions", json={"prompt": "x", "temperature": "hot"}, headers=auth)
    assert r.status_code == 400
    r = httpx.post(url + "/v1/completions", json={"prompt": [7] * 600, "max_tokens": 5}, headers=auth)
    assert r.status_code == 400 and "maximum context length is 512 tokens" in r.json()["error"]["message"]
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(model="tiny", messages=MESSAGES, response_format={"type": "json_object"})
    assert httpx.get(url + "/health").status_code == 200  # still healthy
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).choices


def test_metrics_move(server, client):
    def scrape():
        text = httpx.get(server[0] + "/metrics").text
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                if line and not line.startswith("#")}

    before = scrape()
    client.completions.create(model="tiny", prompt="count me", max_tokens=3, temperature=0,
                              extra_body={"ignore_eos": True})
    after = scrape()
    assert after["shusheng_generation_tokens_total"] - before.get("shusheng_generation_tokens_total", 0) == 3
    assert after["shusheng_time_to_first_token_seconds_count"] > before.get(
        "shusheng_time_to_first_token_seconds_count", 0)
    assert "shusheng_kv_cache_usage_ratio" in after


def test_tool_calls_streamed_and_not(tool_ckpt):
    with running_server(tool_ckpt) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        messages = [{"role": "user", "content": "What is the weather in Shanghai?"}]
        resp = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, temperature=0,
                                              max_tokens=80)
        choice = resp.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "Let me check."
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Shanghai"}
        chunks = list(client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, temperature=0,
                                                     max_tokens=80, stream=True))
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert content == "Let me check." and len(calls) == 1
        assert json.loads(calls[0].function.arguments) == {"city": "Shanghai"}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        # the tool result goes back as role "tool" (rendered as InternLM2's environment turn)
        follow = messages + [choice.message.model_dump(exclude_none=True),
                             {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 22}'}]
        assert client.chat.completions.create(model="tiny", messages=follow, tools=TOOLS, max_tokens=3).choices


def test_64_concurrent_streams_and_disconnects_free_blocks(tiny_ckpt):
    with running_server(tiny_ckpt) as (url, engine):
        prompts = [f"The quick brown fox {i}" for i in range(64)]

        async def one(i, drop):
            body = {"model": "tiny", "prompt": prompts[i], "max_tokens": 24, "temperature": 0, "stream": True,
                    "ignore_eos": True}
            text = ""
            async with httpx.AsyncClient(timeout=120) as http:
                async with http.stream("POST", url + "/v1/completions", json=body) as r:
                    n = 0
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        text += json.loads(line[6:])["choices"][0]["text"]
                        n += 1
                        if drop and n == 3:
                            return None  # hang up mid-stream
            return text

        async def all_clients():
            return await asyncio.gather(*(one(i, drop=i % 2 == 1) for i in range(64)))

        results = asyncio.run(all_clients())
        offline = LLMEngine(EngineConfig(model=str(tiny_ckpt), device="cpu"))
        from shusheng.deploy import SamplingParams

        outs = offline.generate(prompts[::2], SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
        assert results[::2] == [o.outputs[0].text for o in outs]
        bm = engine.engine.block_manager
        for _ in range(100):  # aborts reach the engine thread asynchronously
            if bm.num_free_blocks == bm.num_blocks and not engine.engine.has_unfinished():
                break
            time.sleep(0.05)
        assert bm.num_free_blocks == bm.num_blocks and not engine.engine.has_unfinished()
        assert httpx.get(url + "/health").status_code == 200



def test_full_queue_is_503_and_named_tool_choice_is_forced(tool_ckpt):
    with running_server(tool_ckpt, max_queue=0) as (url, _):
        r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_overloaded"
    with running_server(tool_ckpt) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        messages = [{"role": "user", "content": "What is the weather in Shanghai?"}]
        none = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, tool_choice="none",
                                              temperature=0, max_tokens=5)
        assert not none.choices[0].message.tool_calls
        with pytest.raises(openai.BadRequestError, match="not among the request's tools"):
            client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=5,
                                           tool_choice={"type": "function", "function": {"name": "nope"}})
        forced = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Weather in Shanghai, please."}], tools=TOOLS,
            temperature=0, max_tokens=60,
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
        call = forced.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Shanghai"}
