"""Where a streamed request's time to first token goes, stage by stage, from the client to the engine process and back.

Run on CPU (tiny random model, fp32; under a minute):
    python packages/deploy/benchmarks/ttft_breakdown.py --tiny [--pin] [--rate 20 --output-len 64] [--client raw]
        [--engine-in-thread] [--out result.json]
On one GPU (serve_overhead.py's model and prompt length; a few minutes):
    python packages/deploy/benchmarks/ttft_breakdown.py [--preset internlm2-1.8b] [--input-len 128]
        [--output-len 16] [--requests 30] [--rate 8 --output-len 128] [--pin] [--out result.json]

A random-weight checkpoint is made as serve_overhead.py makes it. The in-process `LLMEngine` first runs the requests
(one at a time, each after a 50 ms pause, as the client sends them; with --rate, serve_overhead.py's replay of the
same Poisson arrivals). Then `shusheng-deploy serve` runs in a subprocess: this script with `_serve`, i.e. the CLI's
own serve command with timing hooks wrapped around a few of the server's functions (no code of the probe's own in
the request path but the stamps). A client sends the same requests to /v1/completions (streaming) one at a time
after the same pause (an idle server), or at the same arrival times. `--client httpx` is bench-serve's client (one
AsyncClient, keep-alive); `--client raw` writes each request in one send on a fresh connection (connected before
the clock starts) and scans the bytes: the difference is what bench-serve's client costs.

Stamps are `time.monotonic()` in every process (CLOCK_MONOTONIC is system-wide on Linux), per request:

    client_send   the client starts the request (bench-serve's TTFT clock starts)
    asgi          uvicorn has parsed the headers and calls the app
    body          the app has the whole request body
    handler       the route runs (the body parsed and validated by pydantic)
    prepared      sampling params built, prompt tokenized and checked; the "add" goes to the engine
    sent          the "add" is written to the engine's pipe (its inbox, with --engine-in-thread)
    engine_in     the engine has added the request (its arrival time)
    first_token   the step that sampled its first token has it on the host
    output        that step's output is built (RequestOutput.metrics["now"])
    reader        the API process's reader thread has the output unpickled (the engine thread delivers it)
    loop          the event loop puts it into the request's stream
    sse           the request's generator has made it an SSE chunk
    written       the first SSE chunk with text goes to uvicorn's send (which writes it to the socket)
    client_first  the client has parsed the first chunk with text (bench-serve's TTFT)

Output: mean and p50 of each gap in ms, TTFT and TPOT as bench-serve computes them, online and offline; the
garbage collections of every process while the timed requests ran and what a full one costs; the engine loop:
step() time by the number of outputs it returned and the gap between steps (the loop's own work). --out writes
every stamp as JSON. With --pin the engine runs alone on the last core (offline: this process's thread; online: the
server's step loop, through `serve --engine-cpus`), the server on the other cores and the client also off the
engine core's hyperthread siblings: whether where the step loop runs slows the engine's CPU-bound steps. On a
small CPU the numbers move by ~10% from run to run; compare several.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import cProfile
import gc
import io
import json
import math
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_overhead import engine_options, make_checkpoint, server, server_flags  # noqa: E402
from serve_overhead import run_offline as run_at_rate  # noqa: E402

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from shusheng.deploy.bench_serve import (  # noqa: E402
    BenchServeConfig,
    _body,
    _chunk_text,
    arrival_times,
    frozen_heap,
    percentiles,
    sample_requests,
)

STAGES = ("client_send", "asgi", "body", "handler", "prepared", "sent", "engine_in", "first_token", "output", "reader",
          "loop", "sse", "written", "client_first")
PAUSE = 0.05  # s between one-at-a-time requests: the server is idle when the next one comes


# ---- the server side: hooks around the real server's functions (run in the `_serve` subprocess) ----

_trace: contextvars.ContextVar[dict] = contextvars.ContextVar("ttft_trace")
TRACES: dict[str, dict] = {}  # request id -> stage -> time.monotonic()
GC_PAUSES: list[tuple[int, float, float]] = []  # this process's collections: (generation, start, end)


def watch_gc(engine=None) -> list:
    """Record this process's garbage collections from now on; returns (and forgets) those recorded so far. Also
    shipped to the engine process (`engine.run(watch_gc)`), hence the unused argument."""
    if not any(getattr(cb, "__name__", "") == "_note_gc" for cb in gc.callbacks):
        start = [0.0]

        def _note_gc(phase, info):
            if phase == "start":
                start[0] = time.monotonic()
            else:
                GC_PAUSES.append((info["generation"], start[0], time.monotonic()))

        gc.callbacks.append(_note_gc)
    out = list(GC_PAUSES)
    GC_PAUSES.clear()
    return out


STEPS: list[tuple[float, float, int]] = []  # the engine's step() calls: (start, end, outputs)
STEP_PROFILE = cProfile.Profile() if os.environ.get("TTFT_PROFILE_STEPS") else None  # --profile-steps


def watch_steps(engine) -> list:
    """Time every `engine.step()` from now on (run where the engine lives); returns and forgets those so far."""
    if "step" not in vars(engine):
        step = engine.step

        def timed_step(*a, **kw):
            t = time.monotonic()
            if STEP_PROFILE is not None:
                STEP_PROFILE.enable()
            outs = step(*a, **kw)
            if STEP_PROFILE is not None:
                STEP_PROFILE.disable()
            STEPS.append((t, time.monotonic(), len(outs)))
            return outs

        engine.step = timed_step
    out = list(STEPS)
    STEPS.clear()
    return out


def step_profile(engine=None, rows: int = 22) -> str:
    """cProfile's top functions by own time over the step() calls timed so far (--profile-steps), then reset."""
    global STEP_PROFILE
    if STEP_PROFILE is None:
        return ""
    text = io.StringIO()
    pstats.Stats(STEP_PROFILE, stream=text).sort_stats("tottime").print_stats(rows)
    STEP_PROFILE = cProfile.Profile()
    return text.getvalue()


def full_gc_ms(engine=None) -> float:
    """What one full collection of this process's heap costs now (frozen objects are not walked)."""
    t = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - t) * 1e3


def _has_text(out) -> bool:
    return any(c.delta_text for c in out.outputs)


def install_hooks() -> None:
    """Wrap the server's functions so that each request's stamps land in TRACES; GET /probe returns and clears it."""
    import shusheng.deploy.server as server_pkg
    from shusheng.deploy import async_engine, engine_process
    from shusheng.deploy.outputs import RequestOutput
    from shusheng.deploy.server import app as app_mod
    from shusheng.deploy.server import serving

    def stamp(name: str) -> None:
        if (t := _trace.get(None)) is not None:
            t.setdefault(name, time.monotonic())

    def wrap_route(fn):
        def wrapped(*a, **kw):
            stamp("handler")
            return fn(*a, **kw)
        return wrapped

    app_mod.chat_stream, app_mod.completion_stream = wrap_route(app_mod.chat_stream), \
        wrap_route(app_mod.completion_stream)

    for cls in (async_engine.AsyncEngine, engine_process.ProcessAsyncEngine):
        def submit(self, item, _orig=cls._submit):
            t = _trace.get(None)
            if item[0] == "add" and t is not None:
                TRACES[item[1]] = t
                t.setdefault("prepared", time.monotonic())
            _orig(self, item)
            if item[0] == "add" and t is not None:
                t.setdefault("sent", time.monotonic())
        cls._submit = submit

    deliver = async_engine.AsyncEngine._deliver_many

    def deliver_many(self, outs):
        now = time.monotonic()
        for out in outs:
            t = TRACES.get(out.request_id)
            if t is not None and "reader" not in t and _has_text(out):
                m = out.metrics
                t.update(reader=now, engine_in=m["arrival"], first_token=m["first_token"], output=m["now"])
        deliver(self, outs)

    async_engine.AsyncEngine._deliver_many = deliver_many
    put_nowait = async_engine.RequestStream.put_nowait

    def put(self, item):
        t = TRACES.get(self.request_id)
        if t is not None and "loop" not in t and isinstance(item, RequestOutput) and _has_text(item):
            t["loop"] = time.monotonic()
        put_nowait(self, item)

    async_engine.RequestStream.put_nowait = put
    sse = serving.sse

    def sse_stamp(obj):
        t = _trace.get(None)
        if t is not None and "sse" not in t and _chunk_text(obj):
            t["sse"] = time.monotonic()
        return sse(obj)

    serving.sse = sse_stamp

    def stamped(make):  # the common chunks are made without sse() (server/sse.py)
        def chunk_stamp(self, index, text, finish_reason):
            t = _trace.get(None)
            if t is not None and "sse" not in t and text:
                t["sse"] = time.monotonic()
            return make(self, index, text, finish_reason)
        return chunk_stamp

    serving.Chunks.text, serving.Chunks.content = stamped(serving.Chunks.text), stamped(serving.Chunks.content)
    build_app = server_pkg.build_app
    server_pkg.build_app = lambda *a, **kw: _Probe(build_app(*a, **kw))


class _Probe:
    """ASGI wrapper: stamps a request's arrival, body and first SSE chunk with text; serves GET /probe."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/probe":
            engine, own_process = self.app.state.shusheng.engine, hasattr(self.app.state.shusheng.engine, "_proc")
            out = {"requests": TRACES, "gc": {"api": watch_gc()}, "steps": await engine.run(watch_steps),
                   "profile": await engine.run(step_profile)}
            if own_process:
                out["gc"]["engine"] = await engine.run(watch_gc)
            if scope["query_string"] == b"full_gc":  # last: this collection is not one the server would make
                out["full_gc_ms"] = {"api": full_gc_ms(), **({"engine": await engine.run(full_gc_ms)}
                                                             if own_process else {})}
            body = json.dumps(out).encode()
            TRACES.clear()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            return await send({"type": "http.response.body", "body": body})
        t = {"asgi": time.monotonic()}
        _trace.set(t)

        async def receive_and_note():
            msg = await receive()
            if msg["type"] == "http.request" and not msg.get("more_body"):
                t.setdefault("body", time.monotonic())
            return msg

        async def send_and_note(msg):
            if "written" not in t and msg["type"] == "http.response.body" and msg["body"][:5] == b"data:" \
                    and msg["body"][5:].strip() != b"[DONE]" and _chunk_text(json.loads(msg["body"][5:])):
                t["written"] = time.monotonic()  # before: a client on the same core may read it before send returns
            await send(msg)

        await self.app(scope, receive_and_note, send_and_note)


def serve(argv: list[str]) -> int:
    from shusheng.deploy import cli

    install_hooks()
    return cli.main(argv)


# ---- the client ----

def _note(t: dict, line) -> None:
    """One SSE line (str or bytes) into a request's client stamps: its id, first text, end and token count."""
    if line[:5] not in ("data:", b"data:") or line[5:].strip() in ("[DONE]", b"[DONE]"):
        return
    chunk = json.loads(line[5:])
    t.setdefault("id", chunk.get("id"))
    if "client_first" not in t and _chunk_text(chunk):
        t["client_first"] = time.monotonic()
    if chunk.get("usage"):
        t["client_end"], t["tokens"] = time.monotonic(), chunk["usage"]["completion_tokens"]


async def _httpx_request(client, body: dict) -> dict:
    t = {"client_send": time.monotonic()}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            _note(t, line)
    return t


async def _raw_request(host: str, port: int, body: dict) -> dict:
    data = json.dumps(body).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    reader, writer = await asyncio.open_connection(host, port)
    t = {"client_send": time.monotonic()}
    writer.write(head + data)
    while line := await reader.readline():
        _note(t, line)
    writer.close()
    return t


async def run_client(url: str, cfg: BenchServeConfig, client_kind: str) -> list[dict]:
    """bench-serve's requests of `cfg`, one at a time (rate inf: each after the previous one finished and a pause)
    or at its Poisson arrival times."""
    import httpx

    bodies = [_body(cfg, "bench", r) for r in sample_requests(cfg)]
    host, port = url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=url, timeout=600.0) as client:
        await client.get("/v1/models")  # the keep-alive connection is open before the first timed request

        def one(body):
            return _httpx_request(client, body) if client_kind == "httpx" else _raw_request(host, int(port), body)

        if math.isinf(cfg.request_rate):
            out = []
            for body in bodies:
                await asyncio.sleep(PAUSE)  # the server is idle
                out.append(await one(body))
            return out
        start, tasks = time.monotonic(), []
        for at, body in zip(arrival_times(len(bodies), cfg.request_rate, cfg.seed + 1), bodies, strict=True):
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            tasks.append(asyncio.create_task(one(body)))
        return await asyncio.gather(*tasks)


# ---- offline ----

def run_alone(engine: LLMEngine, cfg: BenchServeConfig) -> list[dict]:
    """Each request of `cfg` alone through the in-process engine, after the client's pause (an engine woken from
    idle is slower at its first step: caches, clocks): add_request, then step until its output has text."""
    out = []
    for r in sample_requests(cfg):
        time.sleep(PAUSE)
        t = {"client_send": time.monotonic()}
        engine.add_request(r.prompt, SamplingParams(max_tokens=r.max_tokens, temperature=0.0, ignore_eos=True))
        t["prepared"] = time.monotonic()
        while engine.has_unfinished():
            for o in engine.step():
                if "client_first" not in t and _has_text(o):
                    t.update(client_first=time.monotonic(), engine_in=o.metrics["arrival"],
                             first_token=o.metrics["first_token"], output=o.metrics["now"])
                if o.finished:
                    t.update(client_end=time.monotonic(), tokens=len(o.outputs[0].token_ids))
        out.append(t)
    return out


# ---- report ----

def gaps(traces: list[dict]) -> list[tuple[str, dict]]:
    """(stage a -> next stage present, ms stats) for consecutive stages, then the totals."""
    rows = []
    for a, b in zip(STAGES, STAGES[1:], strict=False):
        v = [(t[b] - t[a]) * 1e3 for t in traces if t.get(a) is not None and t.get(b) is not None]
        if v:
            rows.append((f"{a} -> {b}", percentiles(v, (50,))))
    for a, b, name in (("client_send", "client_first", "TTFT (client)"), ("sent", "loop", "engine round trip"),
                       ("engine_in", "first_token", "engine: in -> first token")):
        v = [(t[b] - t[a]) * 1e3 for t in traces if t.get(a) is not None and t.get(b) is not None]
        if v:
            rows.append((name, percentiles(v, (50,))))
    v = [(t["client_end"] - t["client_first"]) * 1e3 / (t["tokens"] - 1) for t in traces
         if t.get("tokens", 0) > 1 and "client_first" in t]
    if v:  # how fast the engine steps once the request runs (bench-serve's TPOT)
        rows.append(("TPOT (client)", percentiles(v, (50,))))
    return rows


def format_rows(title: str, rows: list[tuple[str, dict]]) -> str:
    lines = [title, f"{'stage':<32}{'mean ms':>9}{'p50 ms':>9}"]
    lines += [f"{name:<32}{s['mean']:>9.3f}{s['p50']:>9.3f}" for name, s in rows]
    return "\n".join(lines)


def format_gc(pauses: dict[str, list]) -> str:
    """Garbage collections per process while the timed requests ran: count and ms per generation."""
    lines = ["garbage collections during the timed requests (count / total ms / max ms per generation)"]
    for side, ps in pauses.items():
        cells = []
        for g in (0, 1, 2):
            d = [(b - a) * 1e3 for gen, a, b in ps if gen == g]
            cells.append(f"gen{g} {len(d)} / {sum(d):.1f} / {max(d, default=0):.1f}")
        lines.append(f"  {side:<8}" + "   ".join(cells))
    return "\n".join(lines)


def format_steps(steps: list) -> str:
    """p50 of step() by the number of outputs it returned, and of the gaps between steps: the engine loop's own
    work (draining the pipe, pickling and sending outputs; idle gaps are few, so the median is a busy one)."""
    by: dict[int, list] = {}
    for a, b, n in steps:
        by.setdefault(n, []).append((b - a) * 1e3)
    cells = [f"{n} out {percentiles(v, (50,))['p50']:.3f}" for n, v in sorted(by.items()) if len(v) >= 10]
    loop = [(b[0] - a[1]) * 1e3 for a, b in zip(steps, steps[1:], strict=False)]
    return f"step() p50 ms by outputs: {', '.join(cells)}; between steps p50 {percentiles(loop, (50,))['p50']:.3f} ms"


# ---- main ----

def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU run: tiny preset, fp32, short prompts")
    p.add_argument("--preset", default=None)
    p.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    p.add_argument("--dtype", default=None, help="default bfloat16 (float32 with --tiny)")
    p.add_argument("--input-len", default=None, help="words (= tokens) per prompt, N or LO:HI (default 128; 16)")
    p.add_argument("--output-len", default="16", help="max_tokens per request, N or LO:HI")
    p.add_argument("--requests", type=int, default=30, help="timed requests (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rate", type=float, default=0.0, help="Poisson arrivals per second; 0: one at a time")
    p.add_argument("--client", default="httpx", choices=["httpx", "raw"])
    p.add_argument("--engine-in-thread", action="store_true", help="serve with the engine in a server thread")
    p.add_argument("--no-offline", action="store_true", help="skip the in-process engine run")
    p.add_argument("--pin", action="store_true",
                   help="the engine (offline, or the server's step loop through serve --engine-cpus) alone on the "
                        "last core, the server and the client on the others (the client off its hyperthread "
                        "siblings too)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--max-prefill-graph-tokens", type=int, default=2048, help="the engine option (0: eager prefill)")
    p.add_argument("--profile-steps", action="store_true",
                   help="cProfile the engine's step() calls of the timed requests, offline and in the server")
    p.add_argument("--out", default=None, help="write every stamp and the tables here as JSON")
    args = p.parse_args(argv)
    for k, gpu, cpu in (("preset", "internlm2-1.8b", "tiny"), ("device", "cuda", "cpu"),
                        ("dtype", "bfloat16", "float32"), ("input_len", "128", "16")):
        if getattr(args, k) is None:
            setattr(args, k, cpu if args.tiny else gpu)
    if args.max_model_len is None and not args.tiny:
        args.max_model_len = 2048
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU; --tiny runs on CPU", file=sys.stderr)
        return 2
    opts = engine_options(args)
    env = {}
    if args.profile_steps:  # here (offline) and, through the environment, in the server's processes
        global STEP_PROFILE
        STEP_PROFILE = cProfile.Profile()
        env["TTFT_PROFILE_STEPS"] = "1"
    if args.device == "cpu":  # one torch thread on each side, as serve_overhead.py --tiny
        torch.set_num_threads(1)
        env["OMP_NUM_THREADS"] = "1"
    if args.pin:  # the engine on the last core, its hyperthread siblings idle; everything else on the others
        cpus = sorted(os.sched_getaffinity(0))
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpus[-1]}/topology/thread_siblings_list")
        near = {int(c) for c in siblings.read_text().replace("-", ",").split(",")} if siblings.exists() else set()
        last, rest = {cpus[-1]}, set(cpus) - near - {cpus[-1]} or set(cpus[:-1]) or {cpus[-1]}

    def workload(n: int, seed: int) -> BenchServeConfig:
        return BenchServeConfig("http://127.0.0.1:1", endpoint="completions", num_prompts=n,
                                request_rate=args.rate or math.inf, seed=seed, input_len=args.input_len,
                                output_len=args.output_len, ignore_eos=True, temperature=0.0)

    warm, timed = workload(args.warmup, args.seed + 100), workload(args.requests, args.seed)
    result = {"args": vars(args), "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    with tempfile.TemporaryDirectory(prefix="ttft_breakdown-") as tmp:
        ckpt = make_checkpoint(args.preset, Path(tmp), args.device, getattr(torch, args.dtype))
        if not args.no_offline:
            if args.pin:
                os.sched_setaffinity(0, last)
            engine = LLMEngine(EngineConfig(model=str(ckpt), **opts))
            run_alone(engine, warm)
            with frozen_heap():  # as serve_overhead.py runs its offline side
                watch_gc()
                watch_steps(engine)
                if args.rate:  # serve_overhead.py's replay of the same arrivals; TTFT only
                    off = run_at_rate(engine, timed)
                    result["offline"] = [{"client_send": 0.0, "client_first": r["ttft_ms"] / 1e3,
                                          "client_end": r["e2e_ms"] / 1e3, "tokens": r["output_tokens"]}
                                         for r in off["requests"]]
                else:
                    result["offline"] = run_alone(engine, timed)
                result["gc"], result["offline_steps"] = {"offline": watch_gc()}, watch_steps(engine)
                result["offline_profile"] = step_profile()
            del engine
            gc.collect()  # the engine's reference cycles hold its KV pool, which the server needs
            if args.device == "cuda":
                torch.cuda.empty_cache()
        if args.pin:  # the server starts with every CPU and pins its engine's step loop itself (--engine-cpus)
            os.sched_setaffinity(0, set(cpus))
        flags = server_flags(opts) + (["--engine-in-thread"] if args.engine_in_thread else [])
        flags += ["--engine-cpus", str(cpus[-1])] if args.pin and not args.engine_in_thread else []
        launcher = [sys.executable, str(Path(__file__).resolve()), "_serve"]
        with server(ckpt, flags, Path(tmp) / "server.log", env, launcher=launcher) as url:
            import httpx

            if args.pin:  # the client keeps off the engine's core and its siblings
                os.sched_setaffinity(0, rest)
            asyncio.run(run_client(url, warm, args.client))
            httpx.get(url + "/probe")
            with frozen_heap():  # as bench-serve's run_benchmark does
                watch_gc()
                client = asyncio.run(run_client(url, timed, args.client))
                client_gc = watch_gc()
            probe = httpx.get(url + "/probe?full_gc").json()
    result["online"] = [{**probe["requests"].get(c["id"].split("-", 1)[1], {}), **c} for c in client]
    result["gc"] = {**result.get("gc", {}), "client": client_gc, **probe["gc"]}
    result["full_gc_ms"] = {"client": full_gc_ms(), **probe["full_gc_ms"]}
    result["steps"] = probe["steps"]
    result["online_profile"] = probe["profile"]
    mode = "one at a time" if not args.rate else f"Poisson {args.rate:g} req/s"
    where = "engine thread" if args.engine_in_thread else "engine process"
    print(f"{args.preset} on {result['device']}: {args.requests} requests, {mode}, input {args.input_len} / output "
          f"{args.output_len} tokens, client {args.client}, {where}{', pinned' if args.pin else ''}")
    result["online_gaps"] = gaps(result["online"])
    print(format_rows("online (serve)", result["online_gaps"]))
    if "offline" in result:
        result["offline_gaps"] = gaps(result["offline"])
        print(format_rows("offline (LLMEngine in this process, the same requests and arrivals)",
                          result["offline_gaps"]))
    print(format_gc(result["gc"]))
    print("one full collection now costs (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in result["full_gc_ms"].items()))
    for name, steps in (("online", result["steps"]), ("offline", result.get("offline_steps"))):
        if steps:
            print(f"engine loop {name}: " + format_steps(steps))
    for name in ("offline", "online"):
        if result.get(f"{name}_profile"):
            print(f"step() profile, {name}:\n{result[f'{name}_profile']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        sys.exit(serve(sys.argv[2:]))
    sys.exit(main())
