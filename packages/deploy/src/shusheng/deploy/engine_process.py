"""The engine in its own process, so the HTTP server's event loop and the engine's step loop never share a GIL.

In one process the event loop (parsing requests, writing one SSE chunk per token per stream) and the engine thread
(scheduling, launching the step, sampling) take turns on one interpreter lock: under load every decode step waits
for the loop and the loop waits for the step. vLLM's v1 engine core moved to its own process for this reason;
this is the same split, with a pipe instead of ZMQ:

    API process                                   engine process
    ProcessAsyncEngine.add_request  --("add")-->   LLMEngine.add_prepared
      (tokenize + validate here,                   loop: drain the pipe, step(),
       with EngineFrontend)         <--outputs--   send the step's outputs + stats
    reader thread -> one event-loop wake-up per step -> RequestStreams (as AsyncEngine)

`EngineFrontend` carries what the server reads of an engine (tokenizer, limits, live stats) without the model.
`run(fn, *args)` ships a picklable function to the engine process and returns its result.

`engine_cpus` (serve --engine-cpus) gives the engine's step loop CPUs of its own: the engine process's main thread
is pinned to them once the engine is built, and the API process (with the engine's other threads and any
tensor-parallel ranks) keeps to the rest. On an H200 host a 128-token prefill step took 10.6 ms of host time with
the engine process pinned alone to one core, against 16-19 ms unpinned (likely the loop waking on other cores
with cold caches; not isolated further).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import gc
import itertools
import multiprocessing as mp
import os
import pickle
import queue
import sys
import threading
import time
import traceback

from shusheng.model.tokenizer import load_tokenizer

from .async_engine import AsyncEngine
from .config import EngineConfig
from .llm_engine import RequestLimits, encode_prompt, prepare_prompt
from .output_deltas import OutputRebuilder
from .sampling_params import SamplingParams


class EngineFrontend:
    """The engine as the API process sees it: tokenizer, request limits and the latest stats."""

    def __init__(self, tokenizer, limits: RequestLimits, stats: dict):
        self.tokenizer, self.limits, self.latest_stats = tokenizer, limits, stats
        self.max_model_len = limits.max_model_len

    def encode_prompt(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text)

    def prepare_prompt(self, prompt: str | list[int], params: SamplingParams) -> list[int]:
        return prepare_prompt(self.tokenizer, self.limits, prompt, params)

    def stats(self) -> dict:
        return dict(self.latest_stats)


def freeze_heap() -> None:
    """Leave every object alive now (torch, the model, the web stack: hundreds of thousands) out of all later
    garbage collections. A full collection walks them all (~150 ms on a small CPU, more with CUDA and Triton
    loaded), stalling every request in flight; it comes whenever enough new objects have outlived two younger
    collections. Garbage is collected first so that none of it is frozen for good (vLLM's `freeze_gc_heap`)."""
    gc.collect()
    gc.freeze()


class _Outbox:
    """The engine process's way out: messages are pickled by the caller and written by a sender thread, so a step
    never waits for the API process to read the last one; step outputs go as deltas (`output_deltas`)."""

    def __init__(self, conn):
        self._conn = conn
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="shusheng-engine-sender", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        while (data := self._queue.get()) is not None:
            try:
                self._conn.send_bytes(data)
            except OSError:  # the API process is gone
                return

    def send(self, msg: tuple) -> None:
        self._queue.put(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    def outputs(self, outs: list[tuple], stats: dict) -> None:
        """Step and abort outputs, in the pipe's form already (`LLMEngine.wire_outputs`)."""
        self.send(("outputs", outs, stats))

    def close(self) -> None:
        """Writes out everything queued, then stops the sender."""
        self._queue.put(None)
        self._thread.join()


def parse_cpu_list(text: str) -> set[int]:
    """CPU ids from Linux's list syntax: "3", "0,2", "12-15", "0-3,8"."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise ValueError(f"bad CPU list {text!r}: use ids and ranges such as 3, 0,2 or 12-15")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def split_cpus(engine_cpus: set[int]) -> set[int]:
    """The CPUs left to the API process; ValueError if `engine_cpus` are not this process's or leave none."""
    allowed = os.sched_getaffinity(0)
    if not engine_cpus <= allowed:
        raise ValueError(f"engine CPUs {sorted(engine_cpus - allowed)} are not among this process's CPUs "
                         f"{sorted(allowed)}")
    rest = allowed - engine_cpus
    if not rest:
        raise ValueError(f"the engine CPUs {sorted(engine_cpus)} leave none for the API process: give it fewer")
    return rest


def _core_main(config: EngineConfig, conns, engine_cpus: set[int] | None = None) -> None:
    """The engine process: build the engine, then step while there is work, answering the pipes in between.

    `conns`: the pipe to one API process, or a list of pipes to several (`serve --api-servers N`): each one's
    requests, outputs and calls stay on it. The process ends when every pipe has said "stop" or closed.
    With tensor_parallel_size > 1 this process is rank 0 of a `TPEngine` and starts the other ranks itself."""
    from .tensor_parallel import TPEngine, build_engine

    conns = conns if isinstance(conns, list) else [conns]
    # the sender thread needs the GIL to hand each step's outputs to the pipe: while the engine runs Python, it
    # waits up to a switch interval for it (5 ms by default, more than a decode step)
    sys.setswitchinterval(0.001)
    outs = [_Outbox(c) for c in conns]
    try:
        try:
            engine = build_engine(config)
        except BaseException as e:
            for out in outs:
                out.send(("failed", f"{type(e).__name__}: {e}"))
            return
        engine.delta_outputs = True  # `_Outbox` ships deltas: let the engine make them without copying its lists
        engine.wire_outputs = True  # and step() makes them as the pipe's tuples (an abort's final output too)
        if engine_cpus:  # this (the step loop's) thread only: the sender thread and TP ranks keep the others
            os.sched_setaffinity(0, engine_cpus)
        try:
            freeze_heap()
            for out in outs:
                out.send(("ready", engine.limits, engine.stats()))
            _loop(engine, outs[0], conns[0]) if len(conns) == 1 else _Clients(engine, outs, conns).loop()
        finally:
            if isinstance(engine, TPEngine):
                engine.shutdown()
    finally:
        for out in outs:
            out.close()


def _handle(engine, out: _Outbox, msg: tuple) -> bool:
    """One message from an API process; False for "stop"."""
    kind = msg[0]
    if kind == "stop":
        return False
    if kind == "add":
        _, rid, text, ids, params = msg
        engine.add_prepared(rid, text, ids, params)
    elif kind == "abort":
        final = engine.abort(msg[1])
        if final is not None:
            out.outputs([final], engine.stats())
    elif kind == "call":
        _, call_id, fn, args = msg
        try:
            out.send(("result", call_id, True, fn(engine, *args)))
        except Exception as e:  # the caller gets the error; the engine goes on
            out.send(("result", call_id, False, e))
    return True


def _step(engine, outs: list[_Outbox]) -> list[tuple]:
    try:
        return engine.step()
    except BaseException:
        for out in outs:
            out.send(("crashed", traceback.format_exc()))
        raise


def _loop(engine, out: _Outbox, conn) -> None:
    """One API process: its pipe is drained between steps, and blocks only when the engine is idle."""
    while True:
        if not engine.has_unfinished() or conn.poll():
            msg = conn.recv()  # blocks only when idle
            while True:
                if not _handle(engine, out, msg):
                    return
                if not conn.poll():
                    break
                msg = conn.recv()
        if engine.has_unfinished():
            out.outputs(_step(engine, [out]), engine.stats())


class _Clients:
    """Several API processes, one pipe each (`serve --api-servers N`): each request's outputs go back on the pipe
    it came from, and a pipe that closes (or says "stop") takes its unfinished requests with it."""

    STATS_EVERY = 0.1  # seconds: an API process with nothing running still gets the engine's stats this often

    def __init__(self, engine, outs: list[_Outbox], conns: list):
        self.engine, self.outs = engine, outs
        self.live = dict(enumerate(conns))
        self.owner: dict[str, int] = {}  # request id -> client
        self.last_sent = [0.0] * len(conns)

    def loop(self) -> None:
        from multiprocessing.connection import wait

        engine = self.engine
        while self.live:
            if engine.has_unfinished():
                ready = [i for i, c in self.live.items() if c.poll()]
            else:  # idle: block until some client sends
                index = {id(c): i for i, c in self.live.items()}
                ready = [index[id(c)] for c in wait(list(self.live.values()))]
            for i in ready:
                self._drain(i)
            if engine.has_unfinished():
                self._send(_step(engine, [self.outs[i] for i in self.live]))

    def _drain(self, i: int) -> None:
        conn, out = self.live[i], self.outs[i]
        try:
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "add":
                    if msg[1] in self.engine.requests:  # every unfinished request, whoever sent it
                        out.send(("rejected", msg[1], f"request id {msg[1]!r} is already in use"))
                        continue
                    self.owner[msg[1]] = i
                elif msg[0] == "abort":
                    self.owner.pop(msg[1], None)
                if not _handle(self.engine, out, msg):
                    break
            else:
                return
        except (EOFError, OSError):  # the API process is gone
            pass
        self._drop(i)

    def _drop(self, i: int) -> None:
        """Client i left: abort its unfinished requests (their blocks are freed) and close its pipe (after what was
        queued for it), which ends its reader."""
        conn = self.live.pop(i)
        for rid in [r for r, o in self.owner.items() if o == i]:
            del self.owner[rid]
            self.engine.abort(rid)
        self.outs[i].close()
        conn.close()

    def _send(self, outs: list[tuple]) -> None:
        groups: dict[int, list[tuple]] = {}
        for d in outs:  # wire tuples: (request id, finished, ...)
            i = self.owner.pop(d[0], None) if d[1] else self.owner.get(d[0])
            if i is not None:
                groups.setdefault(i, []).append(d)
        stats, now = self.engine.stats(), time.monotonic()
        for i in self.live:
            if i in groups or now - self.last_sent[i] >= self.STATS_EVERY:
                self.outs[i].outputs(groups.get(i, []), stats)
                self.last_sent[i] = now


_clients = itertools.count()


def wait_ready(conn, timeout: float, proc=None) -> tuple:
    """The engine process's first message on `conn`: ("ready", limits, stats).

    Raises:
        RuntimeError: it failed to start (its error message is included), exited, or said nothing in `timeout` s.
    """
    if not conn.poll(timeout):
        if proc is not None:
            proc.kill()
        raise RuntimeError(f"the engine process did not start within {timeout:.0f} s")
    try:
        msg = conn.recv()
    except EOFError:
        code = proc.exitcode if proc is not None else None
        raise RuntimeError(f"the engine process exited during start-up (exit code {code})") from None
    if msg[0] != "ready":
        raise RuntimeError(f"the engine failed to start: {msg[1]}")
    return msg


class ProcessAsyncEngine(AsyncEngine):
    """`AsyncEngine`'s interface over an engine running in a spawned process (see the module docstring).

    Args:
        config: the engine config (the process loads the model from `config.model`).
        startup_timeout: seconds to wait for the model to load and the KV cache to be sized.
        engine_cpus: CPUs for the engine's step loop alone (see the module docstring); this process keeps the
            rest. None: no pinning.
        conn: a pipe to an engine process started elsewhere, one of several (`serve_workers`); None: spawn one.
            Its shutdown then only leaves it: the engine process ends when its last pipe does.
        ready: that engine's "ready" message, when whoever started it has read it already (`wait_ready`).

    Raises:
        RuntimeError: the engine failed to start (its error message is included).
        ValueError: `engine_cpus` are not this process's CPUs, or leave none for it.
    """

    def __init__(self, config: EngineConfig, startup_timeout: float = 900.0, engine_cpus: set[int] | None = None,
                 conn=None, ready: tuple | None = None):
        tp = config.tensor_parallel_size > 1
        if conn is not None:  # an engine process started elsewhere (`serve --api-servers N`): its pipe to us
            self._proc, self._conn = None, conn
        else:
            if engine_cpus:  # before any thread or process starts: they inherit
                os.sched_setaffinity(0, split_cpus(engine_cpus))
            ctx = mp.get_context("spawn")  # a fresh interpreter: CUDA must not be inherited
            self._conn, child = ctx.Pipe(duplex=True)
            # a daemonic process may not start processes: under tensor parallelism the core starts the other ranks,
            # so it is not one, and shutdown() runs at exit instead (the core also stops when this end of the pipe
            # closes)
            self._proc = ctx.Process(target=_core_main, args=(config, child, engine_cpus),
                                     name="shusheng-engine-core", daemon=not tp)
            self._proc.start()
            child.close()
        tokenizer = load_tokenizer(config.model)
        msg = ready or wait_ready(self._conn, startup_timeout, self._proc)
        self.engine = EngineFrontend(tokenizer, msg[1], msg[2])
        # unique among the clients of one engine process (serve's routes give their own unique ids)
        self._id_prefix = f"req-{os.getpid()}-{next(_clients)}-"
        self._send_lock = threading.Lock()
        self._rebuilder = OutputRebuilder()  # guarded by _send_lock
        self._calls: dict[int, concurrent.futures.Future] = {}
        self._call_ids = itertools.count()
        self._stopping = False
        self._start(self._read, "shusheng-engine-reader")
        if tp and self._proc is not None:
            atexit.register(self.shutdown)

    def _submit(self, item: tuple) -> None:
        if self.error is not None:
            return
        try:
            with self._send_lock:
                if item[0] == "add":  # the prompt stays here: outputs come back as deltas
                    self._rebuilder.add(item[1], item[2], item[3])
                self._conn.send(item)
        except (OSError, EOFError) as e:
            self._fail(RuntimeError(f"the engine process is gone: {e}"))

    async def run(self, fn, *args):
        """Run the picklable `fn(engine, *args)` in the engine process and await its result. (That engine makes
        its step outputs as the pipe's tuples, `LLMEngine.wire_outputs`: stream requests through `generate`, not
        `fn`.)"""
        future: concurrent.futures.Future = concurrent.futures.Future()
        call_id = next(self._call_ids)
        self._calls[call_id] = future
        self._submit(("call", call_id, fn, args))
        return await asyncio.wrap_future(future)

    def _read(self) -> None:
        """Reader thread: waits on the pipe (without the GIL) and hands each step's outputs to their streams."""
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                if not self._stopping:
                    code = self._proc.exitcode if self._proc is not None else None
                    self._fail(RuntimeError(f"the engine process exited (exit code {code})"))
                break
            if msg[0] == "outputs":
                self.engine.latest_stats = msg[2]
                with self._send_lock:
                    outs = [out for d in msg[1] if (out := self._rebuilder.rebuild(d)) is not None]
                self._deliver_many(outs)
            elif msg[0] == "result":
                _, call_id, ok, value = msg
                future = self._calls.pop(call_id, None)
                if future is not None and not future.done():
                    future.set_result(value) if ok else future.set_exception(value)
            elif msg[0] == "rejected":  # an id another API process of the engine has in use
                _, rid, message = msg
                with self._lock:
                    stream = self._streams.pop(rid, None)
                with self._send_lock:
                    self._rebuilder.drop(rid)
                if stream is not None:
                    stream.put(ValueError(message))
            elif msg[0] == "crashed":
                self._fail(RuntimeError(f"the engine process failed:\n{msg[1]}"))
        for future in self._calls.values():
            if not future.done():
                future.set_exception(RuntimeError("the engine process stopped"))

    def _fail(self, e: BaseException) -> None:
        super()._fail(e)
        for future in list(self._calls.values()):
            if not future.done():
                future.set_exception(e)

    def shutdown(self, timeout: float = 10.0) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._submit(("stop",))
        if self._proc is not None:
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout)
        self._thread.join(timeout)  # the reader ends at the engine's end of the pipe closing (as it stops, or
        self._conn.close()  # as it lets this client go)
