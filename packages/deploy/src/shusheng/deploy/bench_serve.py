"""`shusheng-deploy bench-serve URL`: an online benchmark against any OpenAI-compatible server.

    shusheng-deploy bench-serve http://127.0.0.1:8000 --num-prompts 200 --request-rate 4 --input-len 100:1000
    shusheng-deploy bench-serve http://127.0.0.1:8000 --dataset sharegpt.json --max-concurrency 16 --json out.json

Every request streams (SSE) from /v1/chat/completions or /v1/completions. The metrics follow the definitions of
vLLM's `benchmark_serving` and SGLang's `bench_serving`:

- TTFT: from sending the request to the first chunk with non-empty text (queueing and prefill included). A reply
  without any visible text counts its TTFT as its end-to-end latency.
- ITL: the gaps between successive chunks with non-empty text (a chunk carries one step's tokens).
- TPOT: (e2e - TTFT) / (output tokens - 1), with output tokens from the final usage chunk (`stream_options:
  {"include_usage": true}`); only requests with more than one output token have one.
- e2e: from sending the request to the end of its stream.

Arrivals are a Poisson process at `--request-rate` requests/s (exponential gaps from `--seed`; inf sends all at
once), optionally capped at `--max-concurrency` requests in flight. Prompts are synthetic (random common English
words, `--input-len` words each, about one token per word in LLM tokenizers) or the first human turn of each
ShareGPT conversation, with the gpt reply's length estimated as ceil(characters / 4) tokens used as max_tokens.
`ignore_eos` is sent (vLLM, SGLang and Shusheng's server accept it) so that each reply has exactly max_tokens
tokens; `--no-ignore-eos` leaves it out for servers that reject unknown fields. Token totals are the server's
usage counts (prompt_tokens, completion_tokens); without usage, output tokens are counted as text chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import httpx

from .bench import parse_range
from .bench_client import RawClient

ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
METRICS = ("ttft", "tpot", "itl", "e2e")
WORDS = (
    "time year people way day man thing woman life child world school state family student group country problem "
    "hand part place case week company system program question work government number night point home water room "
    "mother area money story fact month lot right study book eye job word business issue side kind head house "
    "service friend father power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war history party result "
    "change morning reason research girl guy moment air teacher force education"
).split()


@dataclass
class BenchServeConfig:
    """One benchmark run.

    Attributes:
        base_url: the server, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted).
        model: model name sent with each request; default the first of GET /v1/models.
        endpoint: "chat" (/v1/chat/completions) or "completions" (/v1/completions).
        num_prompts: requests to send.
        request_rate: mean arrivals per second of a Poisson process; inf sends every request at once.
        max_concurrency: requests in flight at most; None is unbounded.
        seed: seeds the prompts and the arrival gaps.
        input_len: (lo, hi) words per synthetic prompt, uniform.
        output_len: (lo, hi) max_tokens per request, uniform; None is (128, 128) for synthetic prompts and the
            reply's estimated length for a dataset.
        dataset: a ShareGPT-format JSON file; None gives synthetic prompts.
        max_seq_len: dataset conversations whose estimated prompt + reply tokens exceed this are skipped.
        ignore_eos: send `ignore_eos: true` so every reply has exactly max_tokens tokens.
        temperature: sampling temperature of every request.
        api_key: bearer token; default the OPENAI_API_KEY environment variable.
        request_timeout: seconds one request may take in all before it counts as failed.
        client_processes: client processes sharing the requests (request i goes to process i mod k, each on the
            common arrival schedule). One Python process parses every SSE event of every stream; at thousands of
            events per second it becomes the bottleneck and its queueing shows up as server latency.
        client: the HTTP client of the timed requests: "raw" (`bench_client.RawClient`: lean, so that less of the
            client's own time lands in the latencies) or "httpx".
    """

    base_url: str
    model: str | None = None
    endpoint: str = "chat"
    num_prompts: int = 100
    request_rate: float = math.inf
    max_concurrency: int | None = None
    seed: int = 0
    input_len: tuple[int, int] = (128, 128)
    output_len: tuple[int, int] | None = None
    dataset: str | None = None
    max_seq_len: int = 2048
    ignore_eos: bool = True
    temperature: float = 0.0
    api_key: str | None = None
    request_timeout: float = 600.0
    client_processes: int = 1
    client: str = "raw"

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"the server URL must start with http:// or https://, got {self.base_url!r}")
        self.base_url = self.base_url.rstrip("/").removesuffix("/v1")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {sorted(ENDPOINTS)}, got {self.endpoint!r}")
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")
        if not self.request_rate > 0:
            raise ValueError(f"request_rate must be > 0 (inf: all at once), got {self.request_rate}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.client not in ("raw", "httpx"):
            raise ValueError(f"client must be 'raw' or 'httpx', got {self.client!r}")
        if self.client_processes < 1:
            raise ValueError(f"client_processes must be >= 1, got {self.client_processes}")
        if isinstance(self.input_len, str):
            self.input_len = parse_range(self.input_len)
        if isinstance(self.output_len, str):
            self.output_len = parse_range(self.output_len)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0, got {self.request_timeout}")
        if self.api_key is None:
            self.api_key = os.environ.get("OPENAI_API_KEY") or None


@dataclass
class Request:
    prompt: str
    prompt_len: int  # estimated: words (synthetic) or ceil(chars / 4) (dataset)
    max_tokens: int


@dataclass
class RequestResult:
    success: bool = False
    error: str = ""
    prompt_len: int = 0  # the estimate, until the server's usage replaces it
    max_tokens: int = 0
    prompt_tokens: int | None = None  # from usage
    output_tokens: int = 0  # from usage, else the number of text chunks
    ttft: float = 0.0  # seconds
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)

    @property
    def tpot(self) -> float | None:
        return (self.e2e - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None


# ---- prompts ----

def estimate_tokens(text: str) -> int:
    """Tokens of a text without its tokenizer: ceil(characters / 4), OpenAI's rule of thumb for English."""
    return -(-len(text) // 4)


def synthetic_requests(config: BenchServeConfig) -> list[Request]:
    rng = random.Random(config.seed)
    out_range = config.output_len or (128, 128)
    out = []
    for _ in range(config.num_prompts):
        n = rng.randint(*config.input_len)
        out.append(Request(" ".join(rng.choice(WORDS) for _ in range(n)), n, rng.randint(*out_range)))
    return out


def sharegpt_requests(config: BenchServeConfig, min_len: int = 4) -> list[Request]:
    """The first human turn of each conversation and the gpt reply after it, in shuffled order (from the seed).

    Conversations are skipped when the prompt or the reply is under `min_len` estimated tokens or both together
    exceed `config.max_seq_len`. With fewer usable conversations than `num_prompts`, they are repeated in order.

    Raises:
        ValueError: the file is missing, is not JSON, or has no usable conversation.
    """
    try:
        with open(config.dataset, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"dataset file {config.dataset!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"dataset file {config.dataset!r} is not JSON: {e}") from None
    if not isinstance(data, list):
        raise ValueError(f"dataset file {config.dataset!r} must hold a list of {{'conversations': [...]}} objects")
    pairs = []
    for item in data:
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list):
            continue
        roles = [t.get("from") if isinstance(t, dict) else None for t in turns]
        if "human" not in roles:
            continue
        i = roles.index("human")
        if i + 1 >= len(turns) or roles[i + 1] != "gpt":
            continue
        prompt, reply = str(turns[i].get("value", "")), str(turns[i + 1].get("value", ""))
        n_in, n_out = estimate_tokens(prompt), estimate_tokens(reply)
        if n_in < min_len or n_out < min_len or n_in + n_out > config.max_seq_len:
            continue
        pairs.append((prompt, n_in, n_out))
    if not pairs:
        raise ValueError(f"dataset file {config.dataset!r} has no usable conversation (a human turn followed by a "
                         f"gpt reply, each >= {min_len} and together <= {config.max_seq_len} estimated tokens)")
    rng = random.Random(config.seed)
    rng.shuffle(pairs)
    out = []
    for i in range(config.num_prompts):
        prompt, n_in, n_out = pairs[i % len(pairs)]
        out.append(Request(prompt, n_in, rng.randint(*config.output_len) if config.output_len else n_out))
    return out


def sample_requests(config: BenchServeConfig) -> list[Request]:
    return sharegpt_requests(config) if config.dataset else synthetic_requests(config)


def arrival_times(n: int, rate: float, seed: int) -> list[float]:
    """Send times in seconds from the start: the first at 0, then exponential gaps of mean 1 / rate."""
    if math.isinf(rate):
        return [0.0] * n
    rng, t, out = random.Random(seed), 0.0, []
    for i in range(n):
        t += rng.expovariate(rate) if i else 0.0
        out.append(t)
    return out


# ---- one request ----

def _body(config: BenchServeConfig, model: str, req: Request) -> dict:
    body = {"model": model, "max_tokens": req.max_tokens, "temperature": config.temperature, "stream": True,
            "stream_options": {"include_usage": True}}
    if config.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": req.prompt}]
    else:
        body["prompt"] = req.prompt
    if config.ignore_eos:
        body["ignore_eos"] = True
    return body


def _chunk_text(chunk: dict) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    if "text" in c:  # completions
        return c.get("text") or ""
    delta = c.get("delta") or {}
    return (delta.get("content") or "") + (delta.get("reasoning_content") or "")


@contextlib.asynccontextmanager
async def _httpx_stream(client: httpx.AsyncClient, path: str, body: dict):
    async with client.stream("POST", path, json=body) as r:
        yield r.status_code, r.aiter_lines(), r.aread


class _Session:
    """bench-serve's HTTP clients: httpx for the model lookup, `config.client` for the timed requests."""

    def __init__(self, config: BenchServeConfig):
        self.httpx = _client(config)
        self.raw = RawClient(config.base_url, _headers(config)) if config.client == "raw" else None

    def stream(self, path: str, body: dict):
        """POST `body`; an async context manager of (status, lines, read_rest)."""
        return self.raw.stream(path, body) if self.raw is not None else _httpx_stream(self.httpx, path, body)

    async def warm_up(self, config: BenchServeConfig) -> str:
        """The model name (`resolve_model`); the timed client's first connection is open afterwards."""
        model = await resolve_model(self.httpx, config)
        if self.raw is not None:
            await self.raw.get("/v1/models")
        return model

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.httpx.aclose()
        if self.raw is not None:
            await self.raw.aclose()


async def _stream(session: _Session, path: str, body: dict, res: RequestResult) -> None:
    t0 = time.perf_counter()
    last = None
    async with session.stream(path, body) as (status, lines, read_rest):
        if status != 200:
            text = (await read_rest()).decode(errors="replace").strip().replace("\n", " ")
            res.error = f"HTTP {status}: {text[:300]}"
            return
        async for line in lines:
            if not line.startswith("data:"):
                continue  # blank separators, SSE comments and event names
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                res.error = f"server error in stream: {json.dumps(chunk['error'])[:300]}"
                return
            if chunk.get("usage"):
                res.prompt_tokens = chunk["usage"].get("prompt_tokens", res.prompt_tokens)
                res.output_tokens = chunk["usage"].get("completion_tokens", res.output_tokens)
            if _chunk_text(chunk):
                now = time.perf_counter()
                if last is None:
                    res.ttft = now - t0
                else:
                    res.itl.append(now - last)
                last = now
    res.e2e = time.perf_counter() - t0
    if last is None:
        res.ttft = res.e2e
    if res.output_tokens == 0:  # no usage chunk: count text chunks instead
        res.output_tokens = len(res.itl) + (last is not None)
    res.success = True


async def send_request(client: _Session, config: BenchServeConfig, model: str, req: Request,
                       semaphore: asyncio.Semaphore | None) -> RequestResult:
    """Stream one request and time it; failures are recorded in the result, never raised."""
    res = RequestResult(prompt_len=req.prompt_len, max_tokens=req.max_tokens)
    try:
        async with semaphore or contextlib.nullcontext():
            await asyncio.wait_for(_stream(client, ENDPOINTS[config.endpoint], _body(config, model, req), res),
                                   config.request_timeout)
    except asyncio.TimeoutError:
        res.success, res.error = False, f"timed out after {config.request_timeout:g} s"
    except (httpx.HTTPError, ValueError, OSError, asyncio.IncompleteReadError) as e:
        res.success, res.error = False, f"{type(e).__name__}: {e}"
    return res


# ---- the run ----

async def resolve_model(client: httpx.AsyncClient, config: BenchServeConfig) -> str:
    """Check that the server answers and return the model name (the configured one, else the first served).

    Raises:
        ValueError: the server cannot be reached, rejects the API key, or serves no model.
    """
    url = config.base_url + "/v1/models"
    try:
        r = await client.get("/v1/models", timeout=10.0)
    except httpx.HTTPError as e:
        raise ValueError(f"cannot reach {url}: {type(e).__name__}: {e}") from None
    if r.status_code in (401, 403):
        raise ValueError(f"{url} rejected the API key (HTTP {r.status_code}); pass --api-key or set OPENAI_API_KEY")
    try:
        served = [m["id"] for m in r.json()["data"]] if r.status_code == 200 else []
    except (ValueError, KeyError, TypeError):
        served = []
    if config.model:
        if served and config.model not in served:
            raise ValueError(f"the server serves {served}, not {config.model!r}")
        return config.model
    if r.status_code != 200:
        raise ValueError(f"GET {url} answered HTTP {r.status_code}; name the model with --model")
    if not served:
        raise ValueError(f"GET {url} lists no model; name one with --model")
    return served[0]


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict:
    """mean and linear-interpolated percentiles (numpy's default method); None for every key without values."""
    if not values:
        return {"mean": None, **{f"p{q}": None for q in qs}}
    v = sorted(values)
    out = {"mean": sum(v) / len(v)}
    for q in qs:
        x = (len(v) - 1) * q / 100
        lo = math.floor(x)
        hi = min(lo + 1, len(v) - 1)
        out[f"p{q}"] = v[lo] + (v[hi] - v[lo]) * (x - lo)
    return out


def summarize(results: list[RequestResult], duration: float) -> dict:
    """Throughputs over `duration` seconds and mean/p50/p90/p99 of each latency (in ms) over completed requests."""
    ok = [r for r in results if r.success]
    n_in = sum(r.prompt_tokens if r.prompt_tokens is not None else r.prompt_len for r in ok)
    n_out = sum(r.output_tokens for r in ok)
    ms = {
        "ttft": [r.ttft * 1e3 for r in ok],
        "tpot": [r.tpot * 1e3 for r in ok if r.tpot is not None],
        "itl": [x * 1e3 for r in ok for x in r.itl],
        "e2e": [r.e2e * 1e3 for r in ok],
    }
    errors = [r.error for r in results if not r.success]
    return {
        "completed": len(ok),
        "failed": len(errors),
        "duration_s": duration,
        "total_input_tokens": n_in,
        "total_output_tokens": n_out,
        "request_throughput": len(ok) / duration,
        "output_token_throughput": n_out / duration,
        "total_token_throughput": (n_in + n_out) / duration,
        **{f"{m}_ms": percentiles(ms[m]) for m in METRICS},
        "errors": errors[:10],
    }


@contextlib.contextmanager
def frozen_heap():
    """Garbage collections inside the block skip every object alive at its start (`gc.freeze`; they go back to
    the oldest generation at its end). A full collection of a heap holding torch walks ~300k objects (~150 ms on
    a small CPU): in a client that stall lands on every request in flight."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def run_benchmark(config: BenchServeConfig) -> dict:
    """Send `config.num_prompts` streaming requests on the arrival schedule and measure them.

    Args:
        config: the server, workload and arrival process.

    Returns:
        The summary (see `summarize`; latencies in ms) with "model", "endpoint", "base_url", "config" (the API key
        left out) and "requests": one record per request (prompt_len, max_tokens, prompt_tokens, output_tokens,
        ttft_ms, tpot_ms, e2e_ms, itl_ms, success, error).

    Raises:
        ValueError: the server cannot be reached or names no model, or the dataset is missing or unusable.
    """
    requests = sample_requests(config)
    with frozen_heap():
        async with _Session(config) as client:
            model = await client.warm_up(config)
            if config.client_processes == 1:
                results, start, end = await _send(client, config, model, requests, range(len(requests)))
            else:
                results, start, end = await asyncio.to_thread(_send_in_processes, config, model, len(requests))
    duration = end - start
    summary = summarize(results, duration)
    cfg = {k: v for k, v in asdict(config).items() if k != "api_key"}
    cfg["request_rate"] = str(config.request_rate) if math.isinf(config.request_rate) else config.request_rate
    records = [
        {"prompt_len": r.prompt_len, "max_tokens": r.max_tokens, "prompt_tokens": r.prompt_tokens,
         "output_tokens": r.output_tokens, "ttft_ms": r.ttft * 1e3 if r.success else None,
         "tpot_ms": r.tpot * 1e3 if r.success and r.tpot is not None else None,
         "e2e_ms": r.e2e * 1e3 if r.success else None, "itl_ms": [x * 1e3 for x in r.itl],
         "success": r.success, "error": r.error}
        for r in results
    ]
    return {"model": model, "endpoint": config.endpoint, "base_url": config.base_url, "config": cfg, **summary,
            "requests": records}


def _headers(config: BenchServeConfig) -> dict[str, str]:
    return {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}


def _client(config: BenchServeConfig) -> httpx.AsyncClient:
    headers = _headers(config)
    per_process = None if config.max_concurrency is None else -(-config.max_concurrency // config.client_processes)
    limits = httpx.Limits(max_connections=per_process, max_keepalive_connections=per_process)
    timeout = httpx.Timeout(config.request_timeout, connect=10.0)
    return httpx.AsyncClient(base_url=config.base_url, headers=headers, limits=limits, timeout=timeout)


async def _send(client: _Session, config: BenchServeConfig, model: str, requests: list[Request],
                indices) -> tuple[list[RequestResult], float, float]:
    """Requests `indices` of the run, each at its arrival time: (results, start, end) in time.time() seconds."""
    limit = config.max_concurrency
    semaphore = asyncio.Semaphore(-(-limit // config.client_processes)) if limit else None
    times = arrival_times(len(requests), config.request_rate, config.seed + 1)
    start, t0 = time.time(), time.perf_counter()
    tasks = []
    for i in indices:
        await asyncio.sleep(max(0.0, t0 + times[i] - time.perf_counter()))
        tasks.append(asyncio.create_task(send_request(client, config, model, requests[i], semaphore)))
    results = await asyncio.gather(*tasks)
    return results, start, time.time()


def _client_process(config: BenchServeConfig, model: str, part: int, ready, out) -> None:
    """One of `client_processes`: its share of the requests, started when every process is ready."""

    async def main():
        requests = sample_requests(config)
        async with _Session(config) as client:
            # one request first, as the single-process path's model lookup is: this process's first request pays
            # for lazy imports and a new connection (~0.1 s), which is the client's cost, not the server's
            await client.warm_up(config)
            ready.wait()
            return await _send(client, config, model, requests, range(part, len(requests), config.client_processes))

    try:
        with frozen_heap():
            out.put((part, *asyncio.run(main())))
    except BaseException as e:  # the parent raises it
        out.put((part, e, 0.0, 0.0))


def _send_in_processes(config: BenchServeConfig, model: str, n: int) -> tuple[list[RequestResult], float, float]:
    import multiprocessing as mp

    k = config.client_processes
    ctx = mp.get_context("spawn")
    ready, out = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_client_process, args=(config, model, part, ready, out), daemon=True)
             for part in range(k)]
    for proc in procs:
        proc.start()
    parts = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    results: list = [None] * n
    for part, res, _, _ in parts:
        if isinstance(res, BaseException):
            raise RuntimeError(f"client process {part} failed: {res!r}")
        results[part::k] = res
    return results, min(p[2] for p in parts), max(p[3] for p in parts)


def format_summary(s: dict) -> str:
    """The summary as a plain-text table."""
    rows = [
        ("Server", s["base_url"]), ("Model", s["model"]), ("Endpoint", ENDPOINTS[s["endpoint"]]),
        ("Successful requests", s["completed"]), ("Failed requests", s["failed"]),
        ("Benchmark duration (s)", f"{s['duration_s']:.2f}"),
        ("Total input tokens", s["total_input_tokens"]), ("Total output tokens", s["total_output_tokens"]),
        ("Request throughput (req/s)", f"{s['request_throughput']:.2f}"),
        ("Output token throughput (tok/s)", f"{s['output_token_throughput']:.2f}"),
        ("Total token throughput (tok/s)", f"{s['total_token_throughput']:.2f}"),
    ]
    lines = ["=" * 22 + " Serving Benchmark Result " + "=" * 22]
    lines += [f"{k + ':':<36}{v}" for k, v in rows]
    lines.append(f"{'latency (ms)':<16}" + "".join(f"{c:>14}" for c in ("mean", "p50", "p90", "p99")))
    for m in METRICS:
        st = s[f"{m}_ms"]
        lines.append(f"{m.upper():<16}" + "".join(
            f"{st[k]:>14.2f}" if st[k] is not None else f"{'-':>14}" for k in ("mean", "p50", "p90", "p99")))
    for e in dict.fromkeys(s["errors"]):
        lines.append(f"error ({s['errors'].count(e)}x): {e}")
    lines.append("=" * 70)
    return "\n".join(lines)


# ---- CLI ----

def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `shusheng-deploy bench-serve URL` (the URL positional included)."""
    p.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="model name (default: the first of GET /v1/models)")
    p.add_argument("--endpoint", default="chat", choices=sorted(ENDPOINTS))
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="Poisson arrivals per second (default inf: all at once)")
    p.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-len", default="128", help="LO:HI words per synthetic prompt, uniform")
    p.add_argument("--output-len", default=None,
                   help="LO:HI max_tokens, uniform (default 128; with --dataset, the reply's estimated length)")
    p.add_argument("--dataset", default=None, help="ShareGPT-format JSON file (default: synthetic prompts)")
    p.add_argument("--max-seq-len", type=int, default=2048,
                   help="skip dataset conversations longer than this (estimated tokens)")
    p.add_argument("--no-ignore-eos", action="store_true", help="do not send ignore_eos")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--api-key", default=None, help="bearer token (default: $OPENAI_API_KEY)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--client-processes", type=int, default=1,
                   help="client processes sharing the requests (one process parsing every SSE event of a big run "
                        "becomes the bottleneck)")
    p.add_argument("--client", default="raw", choices=["raw", "httpx"],
                   help="HTTP client of the timed requests (raw: a lean asyncio one, less of its own time in the "
                        "latencies)")
    p.add_argument("--json", default=None, help="also write the results here")


def main_from_args(args: argparse.Namespace) -> int:
    """Run `bench-serve` from parsed arguments.

    Returns:
        0 when at least one request completed, 1 when all failed, 2 on bad input (one line on stderr).
    """
    try:
        if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
            raise ValueError(f"the folder of --json {args.json!r} does not exist")
        config = BenchServeConfig(
            base_url=args.url, model=args.model, endpoint=args.endpoint, num_prompts=args.num_prompts,
            request_rate=args.request_rate, max_concurrency=args.max_concurrency, seed=args.seed,
            input_len=args.input_len, output_len=args.output_len, dataset=args.dataset, max_seq_len=args.max_seq_len,
            ignore_eos=not args.no_ignore_eos, temperature=args.temperature, api_key=args.api_key,
            request_timeout=args.request_timeout, client_processes=args.client_processes, client=args.client,
        )
        result = asyncio.run(run_benchmark(config))
    except ValueError as e:
        print(f"shusheng-deploy: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result["completed"] else 1
