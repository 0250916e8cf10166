"""What the HTTP layer costs: the same Poisson workload through the in-process engine and through the real server.

Run on one GPU (issue 4, acceptance item 5: the server adds <= 10% to TTFT and throughput):
    python packages/deploy/benchmarks/serve_overhead.py [--preset internlm2-1.8b] [--rates 2,8,32,inf]
        [--num-prompts 200] [--max-duration 15] [--input-len 128] [--output-len 128] [--engine-cpus 15]
        [--out result.json]
CPU smoke run (tiny preset, fp32, a few short requests; well under a minute):
    python packages/deploy/benchmarks/serve_overhead.py --tiny [--out /tmp/so.json]

Steps:
1. A random-weight checkpoint of the preset (bf16 on GPU, fp32 for --tiny) is written to a temporary folder with a
   word-level tokenizer whose vocabulary holds bench-serve's synthetic prompt words (so a prompt of N words is
   exactly N tokens after BOS, and prompts do not collapse into one repeated <unk> that the prefix cache would
   serve) plus filler tokens up to the preset's vocabulary size. The LM-head rows of the special tokens
   (<unk>, <s>, </s>) are zeroed so greedy decoding never picks a token without text (the client times TTFT at
   the first chunk with text).
2. OFFLINE, for every rate: one `LLMEngine` (loaded from that checkpoint, same engine options as the server) is
   driven by a loop that adds each request (the prompt text, as the server receives it) once its arrival time
   has passed and otherwise calls `step()`; when nothing runs it sleeps until the next arrival. TTFT is from
   the request's scheduled arrival to the end of the first step whose output carries text for it; e2e to the
   step that finishes it; throughput = output tokens / (first arrival to last completion), as the client does.
   The process's heap is frozen meanwhile (`bench_serve.frozen_heap`), as the server's processes and bench-serve's
   client freeze theirs: no side has a full garbage collection of torch's objects in the middle of a run.
3. The engine is freed, then ONE server is started (`python -m shusheng.deploy.cli serve CKPT` in a subprocess,
   the same engine options on the command line) and, for every rate, driven by bench-serve's own client
   (`shusheng.deploy.bench_serve.run_benchmark`: streaming, `stream_options.include_usage`, --client's HTTP client:
   raw by default, the lean one, or httpx; --client-processes
   processes share the requests, since one Python process parsing every SSE event of a busy run is itself the
   bottleneck). The server's own
   TTFT histogram (/metrics, from the request entering the engine queue to its first output) is read before and
   after each rate, so the JSON also has the server-side mean TTFT: client TTFT minus it is what HTTP, parsing,
   tokenization and SSE cost. The server needs fastapi, uvicorn, pydantic, prometheus-client; the client httpx.
   With --tiny (CPU) both sides run torch on one thread (OMP_NUM_THREADS=1 for the server), since the client,
   the server's event loop and its engine thread share a small CPU; CPU ratios say nothing about the GPU case.

Same load: both sides take their requests from one `BenchServeConfig` per rate, through bench-serve's own
`sample_requests` (prompt text and max_tokens) and `arrival_times(n, rate, seed + 1)` (the Poisson send times),
with ignore_eos and greedy sampling. The online side uses the /v1/completions endpoint, so the server tokenizes the
prompt text exactly as the offline `LLMEngine.add_request(text)` does (`encode_prompt`: BOS + the text; no chat
template on either side). Every rate uses its own seed (different prompts), so no rate hits the prefix cache
with an earlier rate's prompts; warm-up requests (all at once, another seed) run on both sides before measuring
(Triton autotuning, allocator; CUDA graphs are captured at engine start on both sides). After each rate the
script checks, request by request, that the offline engine and the server saw the same prompt token count and
produced the same number of output tokens (= max_tokens).

With --engine-cpus LIST both step loops get those CPUs alone: offline, the thread that drives the engine is
pinned to them; online, the server runs with `serve --engine-cpus LIST`, and it and the client processes keep to
the other CPUs. The comparison then isolates the HTTP layer from where the scheduler happens to put each loop.

With --max-duration, a finite rate sends min(--num-prompts, ceil(rate * max_duration)) requests, so slow rates do
not dominate the run time; inf sends --num-prompts at once.

Output: a table per rate (mean and median TTFT, output and request throughput, offline vs online, ratios
online/offline for TTFT and offline/online for throughput) and everything in --out as JSON. Exit code 0 when every
request of every run completed on both sides with matching token counts, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():  # Triton kernels import in its interpreter on CPU; set before triton loads
    os.environ.setdefault("TRITON_INTERPRET", "1")

from shusheng.deploy import EngineConfig, LLMEngine, SamplingParams
from shusheng.deploy.bench import synthetic_tokenizer_file
from shusheng.deploy.bench_serve import (
    WORDS,
    BenchServeConfig,
    arrival_times,
    frozen_heap,
    percentiles,
    run_benchmark,
    sample_requests,
)
from shusheng.deploy.engine_process import parse_cpu_list, split_cpus
from shusheng.model import ModelConfig, Transformer, load_tokenizer, save_pretrained

SPECIAL_IDS = (0, 1, 2)  # <unk>, <s>, </s> of bench.synthetic_tokenizer_file
GPU_DEFAULTS = dict(preset="internlm2-1.8b", rates="2,8,32,inf", num_prompts=200, max_duration=15.0, input_len="128",
                    output_len="128", warmup=32, max_model_len=2048, device="cuda", dtype="bfloat16")
TINY_DEFAULTS = dict(preset="tiny", rates="8,32,inf", num_prompts=16, max_duration=1.5, input_len="16",
                     output_len="16", warmup=4, max_model_len=None, device="cpu", dtype="float32")


# ---- checkpoint ----

def make_checkpoint(preset: str, folder: Path, device: str, dtype: torch.dtype) -> Path:
    """A random-weight checkpoint of `preset` with a word-level tokenizer covering bench-serve's prompt words."""
    cfg = ModelConfig.from_name(preset, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    words = list(dict.fromkeys(WORDS))
    if cfg.vocab_size < len(SPECIAL_IDS) + len(words) + 1:
        raise ValueError(f"preset {preset!r} has too small a vocabulary ({cfg.vocab_size}) for the prompt words")
    tok_dir = synthetic_tokenizer_file(folder / "tokenizer", cfg.vocab_size)
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: 3 + i for i, w in enumerate(words)}
    vocab |= {f"t{i}": i for i in range(len(vocab), cfg.vocab_size)}
    spec["model"]["vocab"] = vocab
    (tok_dir / "tokenizer.json").write_text(json.dumps(spec))
    tok = load_tokenizer(tok_dir)
    assert tok.vocab_size == cfg.vocab_size and tok.bos_id == 1 and tok.eos_id == 2

    torch.manual_seed(0)
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    model.tie_weights()
    model.to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0, cfg.initializer_range)
        model.output.weight[list(SPECIAL_IDS)] = 0.0  # logit 0 < the max of the random others: never picked
    path = save_pretrained(model.eval(), folder / "ckpt", format=cfg.model_type, tokenizer=tok)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return path


# ---- engine options, shared by both sides ----

def engine_options(args) -> dict:
    return dict(device=args.device, dtype=args.dtype, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens,
                gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
                max_prefill_graph_tokens=args.max_prefill_graph_tokens)


def server_flags(opts: dict) -> list[str]:
    """The same options as `shusheng-deploy serve` flags (see cli._engine_config)."""
    flags = ["--device", opts["device"], "--dtype", opts["dtype"], "--max-num-seqs", str(opts["max_num_seqs"]),
             "--max-num-batched-tokens", str(opts["max_num_batched_tokens"]),
             "--gpu-memory-utilization", str(opts["gpu_memory_utilization"])]
    if opts["max_model_len"] is not None:
        flags += ["--max-model-len", str(opts["max_model_len"])]
    if opts["enforce_eager"]:
        flags.append("--enforce-eager")
    flags += ["--max-prefill-graph-tokens", str(opts["max_prefill_graph_tokens"])]
    return flags


# ---- offline ----

def run_offline(engine: LLMEngine, cfg: BenchServeConfig) -> dict:
    """Replay bench-serve's requests and arrival times of `cfg` through the in-process engine; bench-serve's metrics."""
    requests = sample_requests(cfg)
    times = arrival_times(len(requests), cfg.request_rate, cfg.seed + 1)
    params = [SamplingParams(max_tokens=r.max_tokens, temperature=cfg.temperature, ignore_eos=cfg.ignore_eos)
              for r in requests]
    n = len(requests)
    first: list[float | None] = [None] * n
    done: list[float | None] = [None] * n
    out_tokens, prompt_tokens = [0] * n, [0] * n
    index: dict[str, int] = {}
    errors: list[str] = []
    if engine.runner.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    i = 0
    while i < n or engine.has_unfinished():
        now = time.perf_counter() - start
        while i < n and times[i] <= now:
            try:
                index[engine.add_request(requests[i].prompt, params[i])] = i
            except ValueError as e:
                errors.append(str(e))
                done[i] = now
            i += 1
        if not engine.has_unfinished():
            if i < n:
                time.sleep(max(0.0, times[i] - (time.perf_counter() - start)))
            continue
        outs = engine.step()  # every request that progressed, as the server's engine thread steps
        t = time.perf_counter() - start
        for out in outs:
            k = index[out.request_id]
            c = out.outputs[0]
            if first[k] is None and c.delta_text:
                first[k] = t
            if out.finished:
                done[k], out_tokens[k], prompt_tokens[k] = t, len(c.token_ids), len(out.prompt_token_ids)
    duration = time.perf_counter() - start
    ok = [k for k in range(n) if prompt_tokens[k]]
    ttft = {k: ((first[k] if first[k] is not None else done[k]) - times[k]) for k in ok}
    e2e = {k: done[k] - times[k] for k in ok}
    tpot = {k: (e2e[k] - ttft[k]) / (out_tokens[k] - 1) for k in ok if out_tokens[k] > 1}
    n_in, n_out = sum(prompt_tokens), sum(out_tokens)
    return {
        "completed": len(ok), "failed": n - len(ok), "duration_s": duration,
        "total_input_tokens": n_in, "total_output_tokens": n_out,
        "request_throughput": len(ok) / duration, "output_token_throughput": n_out / duration,
        "total_token_throughput": (n_in + n_out) / duration,
        "ttft_ms": percentiles([v * 1e3 for v in ttft.values()]),
        "tpot_ms": percentiles([v * 1e3 for v in tpot.values()]),
        "e2e_ms": percentiles([v * 1e3 for v in e2e.values()]),
        "preemptions": engine.scheduler.num_preemptions, "errors": errors[:10],
        "requests": [{"max_tokens": requests[k].max_tokens, "prompt_tokens": prompt_tokens[k],
                      "output_tokens": out_tokens[k], "ttft_ms": ttft[k] * 1e3 if k in ttft else None,
                      "e2e_ms": e2e[k] * 1e3 if k in e2e else None, "success": k in ttft} for k in range(n)],
    }


# ---- online ----

@contextlib.contextmanager
def server(ckpt: Path, flags: list[str], log: Path, env: dict | None = None, timeout: float = 600.0,
           launcher: list[str] | None = None):
    """`shusheng-deploy serve ckpt` as a subprocess on a free loopback port; yields its URL once /health is 200.
    `launcher` replaces `python -m shusheng.deploy.cli` (a script that takes the CLI's arguments)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [*(launcher or [sys.executable, "-m", "shusheng.deploy.cli"]), "serve", str(ckpt), "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", "bench", *flags]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def server_ttft(url: str) -> tuple[float, float]:
    """(sum in s, count) of the server's own TTFT histogram: from the request entering the engine's queue (after
    HTTP parsing, validation and tokenization) to its first output reaching the event loop."""
    import httpx

    found = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("shusheng_time_to_first_token_seconds_sum", "shusheng_time_to_first_token_seconds_count"):
            found[name.rsplit("_", 1)[1]] = float(value)
    return found.get("sum", 0.0), found.get("count", 0.0)


def run_online(cfg: BenchServeConfig, url: str) -> dict:
    """bench-serve's client against the server, plus the server-side mean TTFT of the same requests."""
    s0, n0 = server_ttft(url)
    res = asyncio.run(run_benchmark(dataclasses.replace(cfg, base_url=url)))
    s1, n1 = server_ttft(url)
    res["server_side_ttft_mean_ms"] = (s1 - s0) / (n1 - n0) * 1e3 if n1 > n0 else None
    return res


# ---- comparison ----

def same_load(off: dict, on: dict) -> dict:
    """Request by request: equal prompt token counts, and output tokens equal to each other and to max_tokens."""
    a, b = off["requests"], on["requests"]
    bad = [k for k, (x, y) in enumerate(zip(a, b, strict=True))
           if not (x["success"] and y["success"] and x["prompt_tokens"] == y["prompt_tokens"]
                   and x["output_tokens"] == y["output_tokens"] == x["max_tokens"] == y["max_tokens"])]
    return {"requests": len(a), "mismatched": len(bad), "first_mismatches": [(a[k], b[k]) for k in bad[:3]]}


def ratios(off: dict, on: dict) -> dict:
    def div(x, y):
        return x / y if x is not None and y else None

    return {
        "ttft_mean": div(on["ttft_ms"]["mean"], off["ttft_ms"]["mean"]),
        "ttft_p50": div(on["ttft_ms"]["p50"], off["ttft_ms"]["p50"]),
        "output_throughput": div(off["output_token_throughput"], on["output_token_throughput"]),
        "request_throughput": div(off["request_throughput"], on["request_throughput"]),
        "tpot_mean": div(on["tpot_ms"]["mean"], off["tpot_ms"]["mean"]),
    }


def format_table(rows: list[dict], limit: float) -> str:
    cols = [("rate", 5), ("reqs", 4), ("TTFT mean ms off/on", 19), ("x", 6), ("TTFT p50 ms off/on", 18), ("x", 6),
            ("out tok/s off/on", 16), ("x", 6), ("req/s off/on", 13), ("x", 6), ("TPOT ms off/on", 14),
            (f"<={limit - 1:.0%}", 5)]
    lines = [" ".join(f"{name:>{w}}" for name, w in cols)]

    def pair(a, b, fmt):
        return f"{a:{fmt}}/{b:{fmt}}" if a is not None and b is not None else "-"

    def x(v):
        return f"{v:.3f}" if v is not None else "-"

    for r in rows:
        off, on, q = r["offline"], r["online"], r["ratios"]
        ok = all(v is not None and v <= limit for v in (q["ttft_mean"], q["output_throughput"]))
        rate = r["rate"] if isinstance(r["rate"], str) else f"{r['rate']:g}"
        cells = [rate, r["num_prompts"], pair(off["ttft_ms"]["mean"], on["ttft_ms"]["mean"], ".1f"),
                 x(q["ttft_mean"]), pair(off["ttft_ms"]["p50"], on["ttft_ms"]["p50"], ".1f"), x(q["ttft_p50"]),
                 pair(off["output_token_throughput"], on["output_token_throughput"], ".0f"),
                 x(q["output_throughput"]), pair(off["request_throughput"], on["request_throughput"], ".2f"),
                 x(q["request_throughput"]), pair(off["tpot_ms"]["mean"], on["tpot_ms"]["mean"], ".2f"),
                 "yes" if ok else "NO"]
        lines.append(" ".join(f"{str(c):>{w}}" for c, (_, w) in zip(cells, cols, strict=True)))
    lines.append("x: online/offline for TTFT and TPOT, offline/online for throughput (1.0 = no overhead); the last "
                 "column checks mean TTFT and output tok/s.")
    return "\n".join(lines)


def _clean(summary: dict) -> dict:
    """A run's summary for the JSON file: ITL lists per request left out (large, and in the means already)."""
    s = dict(summary)
    s["requests"] = [{k: v for k, v in r.items() if k != "itl_ms"} for r in s["requests"]]
    return s


# ---- main ----

def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny preset, fp32, few short requests")
    p.add_argument("--preset", default=None)
    p.add_argument("--rates", default=None, help="comma-separated request rates per second; inf: all at once")
    p.add_argument("--num-prompts", type=int, default=None, help="requests per rate at most")
    p.add_argument("--max-duration", type=float, default=None,
                   help="a finite rate sends at most ceil(rate * this) requests (seconds of arrivals); 0: no cap")
    p.add_argument("--input-len", default=None, help="words (= tokens) per prompt, N or LO:HI")
    p.add_argument("--output-len", default=None, help="max_tokens per request (ignore_eos), N or LO:HI")
    p.add_argument("--warmup", type=int, default=None, help="warm-up requests on each side, sent at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=-1, help="default 2048 (GPU) / the preset's (--tiny)")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--max-prefill-graph-tokens", type=int, default=2048, help="the engine option (0: eager prefill)")
    p.add_argument("--limit", type=float, default=1.10, help="the acceptance ratio (printed as a yes/NO column)")
    p.add_argument("--client", default="raw", choices=["raw", "httpx"],
                   help="bench-serve's HTTP client for the timed requests (default raw: the lean one)")
    p.add_argument("--client-processes", type=int, default=None,
                   help="bench-serve client processes (default 4; 1 with --tiny): one Python process parsing ~10^4 "
                        "SSE events per second is itself the bottleneck")
    p.add_argument("--engine-cpus", default=None, metavar="LIST",
                   help="the step loop on these CPUs alone on both sides: the offline driver's thread, and the "
                        "server's engine (serve --engine-cpus); everything else (server, clients) on the others")
    p.add_argument("--api-servers", type=int, default=1, metavar="N",
                   help="the server's HTTP work over N processes (serve --api-servers N)")
    p.add_argument("--out", default=None, help="write all results here as JSON")
    args = p.parse_args(argv)
    defaults = TINY_DEFAULTS if args.tiny else GPU_DEFAULTS
    for k, v in defaults.items():
        if k == "max_model_len":
            args.max_model_len = v if args.max_model_len == -1 else args.max_model_len
        elif getattr(args, k, None) is None:
            setattr(args, k, v)
    args.rates = [float(r) for r in args.rates.split(",")]
    if args.client_processes is None:
        args.client_processes = 1 if args.tiny else 4
    return args


def num_prompts_for(rate: float, args) -> int:
    if math.isinf(rate) or not args.max_duration:
        return args.num_prompts
    return max(1, min(args.num_prompts, math.ceil(rate * args.max_duration)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out and not Path(args.out).resolve().parent.is_dir():
        print(f"error: the folder of --out {args.out!r} does not exist", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU; --tiny runs a CPU smoke version", file=sys.stderr)
        return 2
    opts = engine_options(args)
    try:
        engine_cpus = parse_cpu_list(args.engine_cpus) if args.engine_cpus else None
        other_cpus = split_cpus(engine_cpus) if engine_cpus else None
    except ValueError as e:
        print(f"error: --engine-cpus: {e}", file=sys.stderr)
        return 2
    server_env = {}
    if opts["device"] == "cpu":  # one torch thread on each side: a small CPU shared with the client stays usable
        torch.set_num_threads(1)
        server_env["OMP_NUM_THREADS"] = "1"

    def workload(rate: float, seed: int, n: int, url: str = "http://127.0.0.1:1") -> BenchServeConfig:
        return BenchServeConfig(url, endpoint="completions", num_prompts=n, request_rate=rate, seed=seed,
                                input_len=args.input_len, output_len=args.output_len, ignore_eos=True,
                                temperature=0.0, client_processes=args.client_processes, client=args.client)

    runs = [(rate, args.seed + 10 * (k + 1), num_prompts_for(rate, args)) for k, rate in enumerate(args.rates)]
    warm = workload(math.inf, args.seed + 10 * (len(runs) + 1), args.warmup) if args.warmup else None
    device_name = torch.cuda.get_device_name() if opts["device"].startswith("cuda") else "cpu"
    result = {"device": device_name, "torch": torch.__version__, "preset": args.preset, "engine_options": opts,
              "endpoint": "/v1/completions", "input_len": args.input_len, "output_len": args.output_len,
              "seed": args.seed, "warmup": args.warmup, "limit": args.limit,
              "client_processes": args.client_processes, "client": args.client,
              "engine_cpus": sorted(engine_cpus) if engine_cpus else None, "api_servers": args.api_servers,
              "rates": []}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serve_overhead-") as tmp:
        # a Triton cache of this run's own (the server inherits it): a new entry in it during a measured rate is a
        # kernel compiled mid-run, a stall of up to a second that the rate's TTFT would carry
        cache = Path(os.environ.setdefault("TRITON_CACHE_DIR", str(Path(tmp) / "triton-cache")))

        def compiles() -> int:
            return len(list(cache.iterdir())) if cache.is_dir() else 0

        t0 = time.perf_counter()
        ckpt = make_checkpoint(args.preset, Path(tmp), opts["device"], getattr(torch, opts["dtype"]))
        print(f"checkpoint: {args.preset} random weights ({opts['dtype']}) in {time.perf_counter() - t0:.1f} s; "
              f"device {device_name}", flush=True)

        # offline: one engine for every rate, freed before the server starts (both size their KV pool from memory)
        t0 = time.perf_counter()
        engine = LLMEngine(EngineConfig(model=str(ckpt), **opts))
        result["offline_kv_blocks"] = engine.runner.num_blocks
        print(f"offline engine ready in {time.perf_counter() - t0:.1f} s ({engine.runner.num_blocks} KV blocks)",
              flush=True)
        offline = []
        if engine_cpus:  # this thread drives the engine: the offline counterpart of the server's step loop
            os.sched_setaffinity(0, engine_cpus)
        with frozen_heap():  # as the server's processes freeze theirs (and bench-serve's client its own)
            if warm:
                result["offline_warmup"] = {k: v for k, v in run_offline(engine, warm).items() if k != "requests"}
            for rate, seed, n in runs:
                engine.scheduler.num_preemptions = 0
                before = compiles()
                offline.append(run_offline(engine, workload(rate, seed, n)))
                o = offline[-1]
                o["triton_compiles"] = compiles() - before
                print(f"offline rate {rate:g}: {n} requests, {o['duration_s']:.1f} s, "
                      f"{o['output_token_throughput']:.0f} out tok/s, TTFT mean {o['ttft_ms']['mean']:.1f} ms, "
                      f"{o['triton_compiles']} Triton compiles", flush=True)
        del engine
        gc.collect()
        if opts["device"].startswith("cuda"):
            torch.cuda.empty_cache()
            left = torch.cuda.memory_reserved() / 2**30
            result["cuda_gib_reserved_after_offline"] = left
            print(f"offline engine freed: {left:.2f} GiB still reserved by this process", flush=True)

        # online: one server for every rate
        if engine_cpus:  # the server starts with every CPU and gives its engine's step loop engine_cpus itself
            os.sched_setaffinity(0, engine_cpus | other_cpus)
        flags = server_flags(opts) + (["--engine-cpus", args.engine_cpus] if engine_cpus else []) + \
            ["--api-servers", str(args.api_servers)]
        t0 = time.perf_counter()
        log = Path(tmp) / "server.log"
        try:
            with server(ckpt, flags, log, server_env) as url:
                print(f"server ready in {time.perf_counter() - t0:.1f} s at {url}", flush=True)
                if engine_cpus:  # the client processes (spawned from here) keep off the engine's CPUs
                    os.sched_setaffinity(0, other_cpus)
                if warm:
                    w = run_online(warm, url)
                    result["online_warmup"] = {k: v for k, v in _clean(w).items() if k != "requests"}
                online = []
                for rate, seed, n in runs:
                    before = compiles()
                    online.append(run_online(workload(rate, seed, n), url))
                    o = online[-1]
                    o["triton_compiles"] = compiles() - before
                    st = o["server_side_ttft_mean_ms"]
                    print(f"online  rate {rate:g}: {n} requests, {o['duration_s']:.1f} s, "
                          f"{o['output_token_throughput']:.0f} out tok/s, TTFT mean {o['ttft_ms']['mean']:.1f} ms "
                          f"(server-side {st if st is None else round(st, 1)} ms), {o['triton_compiles']} Triton "
                          "compiles", flush=True)
        except (RuntimeError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            if log.exists():
                result["server_log_tail"] = log.read_text()[-4000:]

    all_ok = True
    for (rate, seed, n), off, on in zip(runs, offline, online, strict=True):
        check = same_load(off, on)
        ok = off["failed"] == 0 and on["failed"] == 0 and check["mismatched"] == 0
        all_ok &= ok
        result["rates"].append({"rate": "inf" if math.isinf(rate) else rate, "num_prompts": n, "seed": seed,
                                "completed_and_same_load": ok, "same_load": check, "ratios": ratios(off, on),
                                "offline": off, "online": _clean(on)})
    for w in ("offline_warmup", "online_warmup"):
        if w in result and result[w]["failed"]:
            all_ok = False
    result["all_completed"] = all_ok
    result["total_s"] = time.perf_counter() - t_all
    print()
    print(f"{args.preset} on {device_name}: offline LLMEngine vs `shusheng-deploy serve` + bench-serve "
          f"(/v1/completions, streaming), input {args.input_len} / output {args.output_len} tokens, ignore_eos, greedy")
    print(format_table(result["rates"], args.limit))
    for r in result["rates"]:
        if not r["completed_and_same_load"]:
            off, on = r["offline"], r["online"]
            errors = (off["errors"] + on["errors"])[:3]
            print(f"rate {r['rate']}: offline failed {off['failed']}, online failed {on['failed']}, "
                  f"token-count mismatches {r['same_load']['mismatched']}; errors: {errors}")
    print(f"total {result['total_s']:.0f} s; all requests completed with equal token counts: {all_ok}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
