"""Several API processes over one engine process (`serve --api-servers N`, server/workers.py)."""

import asyncio
import json
import multiprocessing as mp
import re
import time
from pathlib import Path

import httpx
import pytest

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams
from shusheng.deploy.engine_process import ProcessAsyncEngine, _core_main, wait_ready

PROMPTS = ["hello world", "the cat sat on", "a b c d e f", "The quick brown fox"]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def reference(ckpt, prompts, params=GREEDY):
    return [o.outputs[0].text for o in LLMEngine(EngineConfig(model=str(ckpt), device="cpu")).generate(prompts, params)]


async def collect(engine, prompt, params=GREEDY):
    text = ""
    async for out in engine.generate(prompt, params):
        text += out.outputs[0].delta_text
    return text


def test_two_clients_share_one_engine_process(tiny_ckpt):
    """Two API-side engines on pipes of one engine process: each gets its own requests' outputs, equal to the
    in-process engine's; a request id already in use by the other is refused; a client that leaves mid-request takes its requests with it (blocks freed) while the
    other goes on; the engine process ends when the last one leaves."""
    config = EngineConfig.from_kwargs(str(tiny_ckpt), device="cpu", dtype="float32")
    ctx = mp.get_context("spawn")
    pipes = [ctx.Pipe(duplex=True) for _ in range(2)]
    proc = ctx.Process(target=_core_main, args=(config, [child for _, child in pipes]), daemon=True)
    proc.start()
    for _, child in pipes:
        child.close()
    a, b = (ProcessAsyncEngine(config, conn=conn, ready=wait_ready(conn, 300, proc)) for conn, _ in pipes)
    try:
        async def both():
            return await asyncio.gather(*(collect(e, p) for e in (a, b) for p in PROMPTS))

        assert asyncio.run(both()) == reference(tiny_ckpt, PROMPTS) * 2
        assert a.num_unfinished == b.num_unfinished == 0

        async def leave_mid_request():
            stream = a.add_request("hello world", SamplingParams(max_tokens=400, ignore_eos=True))
            await stream.__aiter__().__anext__()  # running now
            clash = b.add_request("hi", SamplingParams(max_tokens=2), request_id=stream.request_id)
            with pytest.raises(ValueError, match="already in use"):  # refused by the engine, which goes on
                async for _ in clash:
                    pass
            a.shutdown()  # the pipe says stop: the engine aborts what `a` had
            return await collect(b, PROMPTS[0])  # `b` is served on

        assert asyncio.run(leave_mid_request()) == reference(tiny_ckpt, PROMPTS[:1])[0]
        for _ in range(100):
            stats = asyncio.run(b.run(LLMEngine.stats))
            if stats["running"] == stats["waiting"] == 0 and stats["kv_cache_usage"] == 0.0:
                break
            time.sleep(0.05)
        assert stats["running"] == stats["waiting"] == 0 and stats["kv_cache_usage"] == 0.0
    finally:
        a.shutdown()
        b.shutdown()
    proc.join(30)
    assert proc.exitcode == 0


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name}{labels} not in /metrics"
    return float(m.group(1))


def test_server_with_two_api_processes(tiny_ckpt, cli_server):
    """`serve --api-servers 2`: concurrent streams (half of them hanging up) all correct, every block freed, and
    /metrics adds up both processes' counters whichever one answers."""
    with cli_server(tiny_ckpt, "--api-servers", "2", "--served-model-name", "tiny") as url:
        kids = children(cli_server.pid)
        if kids:  # /proc lists children on Linux: the engine and two API processes (and spawn's resource tracker)
            assert len(kids) >= 3
        prompts = [f"The quick brown fox {i}" for i in range(24)]

        async def one(i, drop):
            body = {"model": "tiny", "prompt": prompts[i], "max_tokens": 16, "temperature": 0, "stream": True,
                    "ignore_eos": True}
            text, n = "", 0
            async with httpx.AsyncClient(timeout=120) as http:  # a connection each: the kernel spreads them
                async with http.stream("POST", url + "/v1/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            text += json.loads(line[6:])["choices"][0]["text"]
                            n += 1
                            if drop and n == 3:
                                return None  # hang up mid-stream
            return text

        async def clients():
            return await asyncio.gather(*(one(i, drop=i % 2 == 1) for i in range(len(prompts))))

        results = asyncio.run(clients())
        params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
        assert results[::2] == reference(tiny_ckpt, prompts[::2], params)
        for _ in range(100):  # aborts reach the engine asynchronously; idle API processes get stats every 0.1 s
            text = httpx.get(url + "/metrics").text
            if metric(text, "shusheng_num_requests_running") == 0 and \
                    metric(text, "shusheng_kv_cache_usage_ratio") == 0:
                break
            time.sleep(0.1)
        assert metric(text, "shusheng_num_requests_running") == 0
        assert metric(text, "shusheng_kv_cache_usage_ratio") == 0
        for _ in range(6):  # fresh connections, so either process may answer: always the server's totals
            text = httpx.get(url + "/metrics").text
            assert metric(text, "shusheng_requests_total", '{endpoint="/v1/completions",status="200"}') == 24
            assert metric(text, "shusheng_generation_tokens_total") >= 12 * 16
        assert httpx.get(url + "/health").status_code == 200


@pytest.mark.parametrize("args, message", [
    (["--api-servers", "0"], "--api-servers must be >= 1, got 0"),
    (["--api-servers", "2", "--engine-in-thread"], "drop --engine-in-thread"),
])
def test_bad_api_servers_in_one_line(tiny_ckpt, capsys, args, message):
    from shusheng.deploy.cli import main as cli_main

    assert cli_main(["serve", str(tiny_ckpt), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_engine_failing_to_start_under_api_servers_is_one_line(tmp_path, capsys):
    from shusheng.deploy.cli import main as cli_main

    (tmp_path / "config.json").write_text("{}")  # not a checkpoint
    assert cli_main(["serve", str(tmp_path), "--device", "cpu", "--api-servers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shusheng-deploy: error: ") and err.count("\n") == 1
