"""Drive an `LLMEngine` from a background thread: add, stream and abort requests from any thread or event loop.

The engine thread owns the engine: it drains an inbox of adds and aborts, runs `step()` while there is work, and
hands each request's outputs to that request's stream. Requests are validated in the caller's thread, so a bad
request fails at once with the engine's error message. The HTTP layer never blocks the engine: it only awaits
its streams.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import AsyncIterator, Iterator

from .llm_engine import LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams

_END = object()


class RequestStream:
    """Outputs of one request, readable from a thread (`for out in stream`) or an event loop (`async for`)."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None):
        self.request_id = request_id
        self._loop = loop
        self._queue: asyncio.Queue | queue.Queue = asyncio.Queue() if loop else queue.Queue()

    def put(self, item) -> None:  # called from the engine thread
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        else:
            self._queue.put(item)

    def __iter__(self) -> Iterator[RequestOutput]:
        while (item := self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        while (item := await self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._inbox: queue.Queue = queue.Queue()
        self._streams: dict[str, RequestStream] = {}
        self._ids = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="shusheng-engine", daemon=True)
        self._thread.start()

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> RequestStream:
        """Queue a request; returns its stream. Raises ValueError at once for a bad request."""
        if self.error is not None:
            raise RuntimeError(f"the engine stopped after an error: {self.error!r}")
        params = params or SamplingParams()
        with self._lock:
            if request_id is None:
                request_id = f"req-{self._ids}"
                self._ids += 1
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in use")
            ids = self.engine.prepare_prompt(prompt, params)  # validation in the caller's thread
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            stream = RequestStream(request_id, loop)
            self._streams[request_id] = stream
        self._inbox.put(("add", request_id, prompt if isinstance(prompt, str) else None, ids, params))
        return stream

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs; aborts the request if the consumer stops early (e.g. a client hung up)."""
        stream = self.add_request(prompt, params, request_id)
        finished = False
        try:
            async for out in stream:
                finished = out.finished
                yield out
        finally:
            if not finished:
                self.abort(stream.request_id)

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    async def run(self, fn, *args):
        """Run `fn(engine, *args)` on the engine thread (which owns the model) and await its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._inbox.put(("call", fn, args, future))
        return await asyncio.wrap_future(future)

    @property
    def num_unfinished(self) -> int:
        """Requests added and not finished yet (queued in the inbox, waiting or running)."""
        return len(self._streams)

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        self._inbox.put(("wake",))
        self._thread.join(timeout)

    # ---- engine thread ----

    def _loop(self) -> None:
        try:
            while not self._stopped.is_set():
                self._drain(block=not self.engine.has_unfinished())
                if self.engine.has_unfinished():
                    for out in self.engine.step():
                        self._deliver(out)
        except BaseException as e:  # deliver the failure to every waiting request, then stop
            self.error = e
            with self._lock:
                streams = list(self._streams.values())
                self._streams.clear()
            for s in streams:
                s.put(e)

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item) -> None:
        if item[0] == "add":
            _, rid, text, ids, params = item
            self.engine.add_prepared(rid, text, ids, params)
        elif item[0] == "call":
            _, fn, args, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(self.engine, *args))
                except Exception as e:  # the caller gets the error; the engine goes on
                    future.set_exception(e)
        elif item[0] == "abort":
            out = self.engine.abort(item[1])
            if out is not None:
                self._deliver(out)

    def _deliver(self, out: RequestOutput) -> None:
        with self._lock:
            stream = self._streams.get(out.request_id)
            if stream is not None and out.finished:
                del self._streams[out.request_id]
        if stream is not None:
            stream.put(out)
            if out.finished:
                stream.put(_END)
