"""Drive an `LLMEngine` from a background thread: add, stream and abort requests from any thread or event loop.

The engine thread owns the engine: it drains an inbox of adds and aborts, runs `step()` while there is work, and
hands each request's outputs to that request's stream. Requests are validated in the caller's thread, so a bad
request fails at once with the engine's error message. The HTTP layer never blocks the engine: it only awaits
its streams.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import queue
import threading
from collections.abc import AsyncIterator, Iterator

from .llm_engine import LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams

_END = object()


def merge_outputs(old: RequestOutput, new: RequestOutput) -> RequestOutput:
    """One output standing for `old` then `new` (consecutive outputs of a request): `new`'s snapshot with the
    deltas of both. Lets a slow consumer take several engine steps at once instead of falling further behind."""
    prev = {c.index: c for c in old.outputs}
    for c in new.outputs:
        if (o := prev.get(c.index)) is not None:
            c.delta_text = o.delta_text + c.delta_text
            c.delta_token_ids = o.delta_token_ids + c.delta_token_ids
    if new.prompt_logprobs is None:
        new.prompt_logprobs = old.prompt_logprobs
    return new


class RequestStream:
    """Outputs of one request, readable from a thread (`for out in stream`) or an event loop (`async for`).

    In an event loop, outputs that arrive while the consumer is busy are merged (`merge_outputs`): the consumer
    always gets everything, in as few items as it can keep up with (vLLM v1's output collector does the same).
    """

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None):
        self.request_id = request_id
        self._loop = loop
        if loop is None:
            self._queue: queue.Queue = queue.Queue()
        else:
            self._items: collections.deque = collections.deque()
            self._ready = asyncio.Event()

    def put(self, item) -> None:
        """From any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.put_nowait, item)
        else:
            self._queue.put(item)

    def put_nowait(self, item) -> None:
        """In the stream's event loop."""
        last = self._items[-1] if self._items else None
        if isinstance(item, RequestOutput) and isinstance(last, RequestOutput) and not last.finished:
            self._items[-1] = merge_outputs(last, item)
        else:
            self._items.append(item)
        self._ready.set()

    def __iter__(self) -> Iterator[RequestOutput]:
        while (item := self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        while True:
            if not self._items:
                self._ready.clear()
                await self._ready.wait()
            item = self._items.popleft()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class AsyncEngine:
    _id_prefix = "req-"  # of the request ids made here when the caller gives none

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._inbox: queue.Queue = queue.Queue()
        self._stopped = threading.Event()
        self._start(self._loop, "shusheng-engine")

    def _start(self, target, name: str) -> None:
        """The request registry, then the background thread that feeds it (the engine loop, or a pipe reader)."""
        self._streams: dict[str, RequestStream] = {}
        self._ids = 0
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> RequestStream:
        """Queue a request; returns its stream. Raises ValueError at once for a bad request."""
        if self.error is not None:
            raise RuntimeError(f"the engine stopped after an error: {self.error!r}")
        params = params or SamplingParams()
        with self._lock:
            if request_id is None:
                request_id = f"{self._id_prefix}{self._ids}"
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
        self._submit(("add", request_id, prompt if isinstance(prompt, str) else None, ids, params))
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
        self._submit(("abort", request_id))

    def _submit(self, item: tuple) -> None:
        self._inbox.put(item)

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
                    self._deliver_many(self.engine.step())
        except BaseException as e:  # deliver the failure to every waiting request, then stop
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
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
                self._deliver_many([out])

    def _deliver_many(self, outs: list[RequestOutput]) -> None:
        """A step's outputs: one wake-up per event loop (not one per request), then plain puts inside it."""
        by_loop: dict = {}
        for out in outs:
            with self._lock:
                stream = self._streams.get(out.request_id)
                if stream is not None and out.finished:
                    del self._streams[out.request_id]
            if stream is None:
                continue
            if stream._loop is None:
                stream.put(out)
                if out.finished:
                    stream.put(_END)
            else:
                items = by_loop.setdefault(stream._loop, [])
                items.append((stream, out))
                if out.finished:
                    items.append((stream, _END))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_put_all, items)


def _put_all(items: list) -> None:
    for stream, item in items:
        stream.put_nowait(item)
