"""The online benchmark against the real server (Poisson and fixed concurrency, synthetic and ShareGPT prompts),
its metrics on hand-made timings, and its error paths."""

import argparse
import asyncio
import gc
import json
import math
import time

import pytest

from shusheng.deploy.bench_serve import (
    BenchServeConfig,
    RequestResult,
    add_arguments,
    arrival_times,
    frozen_heap,
    main_from_args,
    percentiles,
    run_benchmark,
    sharegpt_requests,
    summarize,
    synthetic_requests,
)

KEY = "sk-bench-test"
SUMMARY_KEYS = {"model", "endpoint", "base_url", "config", "completed", "failed", "duration_s", "total_input_tokens",
                "total_output_tokens", "request_throughput", "output_token_throughput", "total_token_throughput",
                "ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "errors", "requests"}
REQUEST_KEYS = {"prompt_len", "max_tokens", "prompt_tokens", "output_tokens", "ttft_ms", "tpot_ms", "e2e_ms", "itl_ms",
                "success", "error"}


@pytest.fixture(scope="module")
def server(tiny_ckpt, cli_server):
    """`shusheng-deploy serve` on the tiny checkpoint (a subprocess on a free loopback port)."""
    with cli_server(tiny_ckpt, "--api-keys", KEY, "--served-model-name", "tiny") as url:
        yield url


def parse(argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


def check_all_succeeded(result: dict, n: int):
    assert set(result) == SUMMARY_KEYS
    assert result["completed"] == n and result["failed"] == 0 and result["errors"] == []
    assert len(result["requests"]) == n
    for r in result["requests"]:
        assert set(r) == REQUEST_KEYS
        assert r["success"] and r["error"] == ""
        assert r["output_tokens"] == r["max_tokens"]  # ignore_eos: exactly max_tokens, counted by the server
        assert r["prompt_tokens"] > 0
        assert 0 < r["ttft_ms"] <= r["e2e_ms"]
        assert len(r["itl_ms"]) <= r["output_tokens"] - 1 and all(x >= 0 for x in r["itl_ms"])
        assert r["tpot_ms"] == pytest.approx((r["e2e_ms"] - r["ttft_ms"]) / (r["output_tokens"] - 1))
    out = sum(r["max_tokens"] for r in result["requests"])
    assert result["total_output_tokens"] == out
    assert result["total_input_tokens"] == sum(r["prompt_tokens"] for r in result["requests"])
    d = result["duration_s"]
    assert result["request_throughput"] == pytest.approx(n / d)
    assert result["output_token_throughput"] == pytest.approx(out / d)
    assert result["total_token_throughput"] == pytest.approx((out + result["total_input_tokens"]) / d)
    for m in ("ttft", "tpot", "itl", "e2e"):
        st = result[f"{m}_ms"]
        assert set(st) == {"mean", "p50", "p90", "p99"} and st["p50"] <= st["p90"] <= st["p99"]
    assert result["ttft_ms"]["p99"] <= result["e2e_ms"]["p99"]


def test_poisson_synthetic_chat(server):
    cfg = BenchServeConfig(server, num_prompts=6, request_rate=20.0, seed=3, input_len=(3, 6), output_len=(4, 8),
                           api_key=KEY)
    result = asyncio.run(run_benchmark(cfg))
    check_all_succeeded(result, 6)
    assert result["model"] == "tiny" and result["endpoint"] == "chat"  # the first model of /v1/models
    assert [r["max_tokens"] for r in result["requests"]] == [q.max_tokens for q in synthetic_requests(cfg)]
    assert result["duration_s"] >= arrival_times(6, 20.0, cfg.seed + 1)[-1]  # the last one was sent on schedule
    json.dumps(result)  # serializable as is


def test_requests_shared_by_client_processes(server):
    cfg = BenchServeConfig(server, endpoint="completions", num_prompts=7, request_rate=40.0, seed=5, input_len=(3, 6),
                           output_len=(3, 9), api_key=KEY, client_processes=2)
    result = asyncio.run(run_benchmark(cfg))
    check_all_succeeded(result, 7)
    # records in the run's request order, whichever process sent them
    assert [r["max_tokens"] for r in result["requests"]] == [q.max_tokens for q in synthetic_requests(cfg)]
    assert result["duration_s"] >= arrival_times(7, 40.0, cfg.seed + 1)[-1]
    with pytest.raises(ValueError, match="client_processes must be >= 1"):
        BenchServeConfig(server, client_processes=0)


def test_fixed_concurrency_sharegpt_completions_cli(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    usable = [("Tell me about the quick brown fox.", "The fox jumps over the lazy dog, quickly."),
              ("What is paged attention?", "Keys and values live in blocks of the cache."),
              ("Describe continuous batching please.", "It keeps the GPU busy with new requests.")]
    data = [{"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": g}]} for p, g in usable]
    data += [
        {"conversations": [{"from": "human", "value": "A question that is fine."}, {"from": "gpt", "value": "ok"}]},
        {"conversations": [{"from": "gpt", "value": "A reply with no question before it."}]},
        {"conversations": [{"from": "human", "value": "long " * 60}, {"from": "gpt", "value": "A fine reply here."}]},
        {"id": "no conversations"},
    ]
    dataset, out = tmp_path / "sharegpt.json", tmp_path / "result.json"
    dataset.write_text(json.dumps(data))
    code = main_from_args(parse([server, "--endpoint", "completions", "--dataset", str(dataset), "--num-prompts", "3",
                                 "--max-concurrency", "1", "--max-seq-len", "60", "--json", str(out)]))
    assert code == 0
    printed = capsys.readouterr().out
    assert "Successful requests:" in printed and "TTFT" in printed and "TPOT" in printed
    result = json.loads(out.read_text())
    check_all_succeeded(result, 3)
    assert result["endpoint"] == "completions" and result["config"]["max_concurrency"] == 1
    assert "api_key" not in result["config"]
    # the gpt reply's length in ceil(chars / 4) tokens is each request's max_tokens
    assert sorted(r["max_tokens"] for r in result["requests"]) == sorted(-(-len(g) // 4) for _, g in usable)
    # one request in flight at a time: they ran back to back
    assert result["duration_s"] * 1e3 >= sum(r["e2e_ms"] for r in result["requests"])


def test_sharegpt_sampling(tmp_path):
    turns = [{"from": "system", "value": "You are kind."}, {"from": "human", "value": "First question here?"},
             {"from": "gpt", "value": "First answer is this one."}, {"from": "human", "value": "Second?"}]
    (tmp_path / "d.json").write_text(json.dumps([{"conversations": turns}]))
    cfg = BenchServeConfig("http://127.0.0.1:1", dataset=str(tmp_path / "d.json"), num_prompts=3)
    reqs = sharegpt_requests(cfg)
    assert [(q.prompt, q.prompt_len, q.max_tokens) for q in reqs] == [("First question here?", 5, 7)] * 3
    cfg.output_len = (2, 2)
    assert [q.max_tokens for q in sharegpt_requests(cfg)] == [2, 2, 2]


def test_arrivals_and_metrics():
    times = arrival_times(20000, 4.0, seed=0)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert times[0] == 0.0 and min(gaps) >= 0
    assert sum(gaps) / len(gaps) == pytest.approx(0.25, rel=0.03)  # exponential gaps of mean 1 / rate
    assert arrival_times(3, math.inf, seed=0) == [0.0, 0.0, 0.0]
    assert percentiles([4.0, 1.0, 3.0, 2.0]) == pytest.approx({"mean": 2.5, "p50": 2.5, "p90": 3.7, "p99": 3.97})
    assert percentiles([]) == {"mean": None, "p50": None, "p90": None, "p99": None}
    results = [RequestResult(success=True, prompt_len=9, prompt_tokens=10, output_tokens=5, ttft=0.1, e2e=0.5,
                             itl=[0.1, 0.1, 0.2]),
               RequestResult(success=True, prompt_len=3, output_tokens=1, ttft=0.2, e2e=0.2),
               RequestResult(success=False, error="HTTP 500: boom")]
    s = summarize(results, duration=2.0)
    assert s["completed"] == 2 and s["failed"] == 1 and s["errors"] == ["HTTP 500: boom"]
    assert s["total_input_tokens"] == 13 and s["total_output_tokens"] == 6  # usage where given, else the estimate
    assert s["request_throughput"] == 1.0 and s["output_token_throughput"] == 3.0
    assert s["total_token_throughput"] == 9.5
    assert s["tpot_ms"]["mean"] == pytest.approx(100.0)  # (500 - 100) / (5 - 1); one-token replies have none
    assert s["ttft_ms"]["mean"] == pytest.approx(150.0) and s["e2e_ms"]["p50"] == pytest.approx(350.0)
    assert s["itl_ms"]["p50"] == pytest.approx(100.0)


def test_frozen_heap_leaves_the_run_to_collect_only_its_own_objects():
    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() > before  # everything alive at the start (torch's modules among them)
        t0 = time.perf_counter()
        gc.collect()
        assert time.perf_counter() - t0 < 0.05  # a full collection walks nothing frozen
    assert gc.get_freeze_count() == 0  # back to the oldest generation, collectable again


@pytest.mark.parametrize("argv, message", [
    (["--input-len", "9:2"], "needs 1 <= LO <= HI"),
    (["--output-len", "x"], "is not LO:HI or N"),
    (["--dataset", "/no/such/file.json"], "does not exist"),
    (["--num-prompts", "0"], "num_prompts must be >= 1"),
    (["--request-rate", "0"], "request_rate must be > 0"),
    (["--json", "/no/such/folder/out.json"], "does not exist"),
])
def test_bad_input_exits_2(argv, message, capsys):
    assert main_from_args(parse(["http://127.0.0.1:1"] + argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("shusheng-deploy: error: ") and message in err and err.count("\n") == 1


def test_bad_server_exits_2(server, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main_from_args(parse(["http://127.0.0.1:9", "--num-prompts", "1"])) == 2
    assert "cannot reach http://127.0.0.1:" in capsys.readouterr().err
    assert main_from_args(parse(["127.0.0.1:8000"])) == 2
    assert "must start with http:// or https://" in capsys.readouterr().err
    assert main_from_args(parse([server, "--num-prompts", "1"])) == 2
    assert "rejected the API key" in capsys.readouterr().err
    assert main_from_args(parse([server, "--num-prompts", "1", "--api-key", KEY, "--model", "nope"])) == 2
    assert "the server serves ['tiny'], not 'nope'" in capsys.readouterr().err
