"""`serve --api-servers N`: N API processes in front of one engine process (vLLM's `--api-server-count`).

One API process does all of the HTTP work for the whole server: parsing and validating requests, tokenizing,
writing each stream's SSE chunks. That is about a millisecond per request (see `ttft_breakdown.py`), so a burst
of requests queues in it while the engine waits. With N API processes, the work is split N ways:

    this process: start the engine process with N pipes; bind the port; start N workers; wait
    worker k:     ProcessAsyncEngine over pipe k -> build_app -> uvicorn on the shared listening socket
    engine:       `engine_process._Clients`: requests from every pipe, each request's outputs back on its own pipe

The kernel hands each new connection to one of the workers accepting on the socket. `/metrics` adds up every
worker's counters and histograms (prometheus-client's multiprocess mode, over files in a temporary folder), so any
worker answers for the whole server. When a worker exits, its requests are aborted and their blocks freed; the
server stops when any process exits, or on SIGINT / SIGTERM.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
from multiprocessing.connection import wait

from ..config import EngineConfig
from ..engine_process import _core_main, split_cpus, wait_ready


def _api_worker(config: EngineConfig, conn, ready: tuple, sock, app_kwargs: dict, log_level: str) -> None:
    import uvicorn

    from ..engine_process import ProcessAsyncEngine, freeze_heap
    from .app import build_app

    sys.setswitchinterval(0.001)  # the pipe reader thread and the event loop share the GIL (see cli.cmd_serve)
    engine = ProcessAsyncEngine(config, conn=conn, ready=ready)
    app = build_app(engine, **app_kwargs)
    freeze_heap()
    uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])


def serve_workers(config: EngineConfig, num_api_servers: int, host: str, port: int, app_kwargs: dict,
                  log_level: str = "info", engine_cpus: set[int] | None = None,
                  startup_timeout: float = 900.0) -> int:
    """Run the server as `num_api_servers` API processes over one engine process until a signal or an exit.

    Args:
        app_kwargs: `build_app`'s arguments but the engine (model_name, api_keys, chat_template, max_queue).

    Returns:
        0 after SIGINT / SIGTERM, 1 when a process exited on its own.

    Raises:
        ValueError: the engine failed to start (its one-line reason), or bad `engine_cpus`.
    """
    import uvicorn

    if engine_cpus:  # the workers inherit the rest; the engine pins its step loop to engine_cpus
        os.sched_setaffinity(0, split_cpus(engine_cpus))
    ctx = mp.get_context("spawn")
    pipes = [ctx.Pipe(duplex=True) for _ in range(num_api_servers)]
    engine = ctx.Process(target=_core_main, args=(config, [child for _, child in pipes], engine_cpus),
                         name="shusheng-engine-core", daemon=config.tensor_parallel_size == 1)
    engine.start()
    for _, child in pipes:
        child.close()
    try:
        readies = [wait_ready(conn, startup_timeout, engine) for conn, _ in pipes]
    except RuntimeError as e:
        engine.join(10)
        raise ValueError(str(e).removeprefix("the engine failed to start: ")) from None
    metrics_dir = tempfile.mkdtemp(prefix="shusheng-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by prometheus-client as the workers import it
    sock = uvicorn.Config("unused", host=host, port=port).bind_socket()
    workers = [ctx.Process(target=_api_worker, args=(config, conn, ready, sock, app_kwargs, log_level),
                           name=f"shusheng-api-{k}")
               for k, ((conn, _), ready) in enumerate(zip(pipes, readies, strict=True))]
    for w in workers:
        w.start()
    for conn, _ in pipes:  # each worker holds its own end now
        conn.close()
    sock.close()
    print(f"shusheng-deploy: {num_api_servers} API processes on http://{host}:{port}", file=sys.stderr, flush=True)

    stopped: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: stopped.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}  # Ctrl-C reaches the workers too: they stop themselves
    procs = workers + [engine]
    try:
        while not stopped and all(p.is_alive() for p in procs):
            wait([p.sentinel for p in procs], timeout=0.5)  # until a signal or any process exits
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for w in workers:  # uvicorn's graceful shutdown; each worker's lifespan then leaves the engine
            if w.is_alive():
                w.terminate()
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
        engine.join(30)  # it stops once its last pipe has closed
        if engine.is_alive():
            engine.kill()
            engine.join(10)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0 if stopped else 1
