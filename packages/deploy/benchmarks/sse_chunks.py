"""The API process's Python per streamed chunk: from a step's outputs reaching the event loop to the SSE strings.

    PYTHONPATH=packages/model/src:packages/deploy/src python packages/deploy/benchmarks/sse_chunks.py \
        [--streams 200] [--steps 60] [--repeats 5]

`--streams` streaming /v1/completions requests (the server's own `completion_stream`, over `RequestStream`s of an
engine stand-in) each get an output with one new token per step, delivered as the pipe reader delivers a step
(`_put_all` in the event loop); consumers read every stream's chunks. No HTTP: this is the part of a busy
server's per-token work that precedes uvicorn's write. Prints microseconds per chunk for each repeat and their
median (uvloop when installed, as the server runs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from shusheng.deploy.async_engine import _END, RequestStream, _put_all
from shusheng.deploy.outputs import CompletionOutput, RequestOutput
from shusheng.deploy.server.metrics import Metrics
from shusheng.deploy.server.protocol import CompletionRequest
from shusheng.deploy.server.serving import ServerState, completion_stream


class _Tokenizer:
    def decode(self, ids: list[int]) -> str:
        return ""


class _Frontend:
    tokenizer = _Tokenizer()


class _Engine:
    """What `completion_stream` needs of an engine: requests become streams this script feeds."""

    def __init__(self):
        self.engine, self.streams, self.num_unfinished = _Frontend(), [], 0

    def add_request(self, prompt, params, request_id: str) -> RequestStream:
        stream = RequestStream(request_id, asyncio.get_running_loop())
        self.streams.append(stream)
        return stream

    def abort(self, request_id: str) -> None:
        pass


async def one_run(streams: int, steps: int) -> float:
    """Microseconds per chunk."""
    engine = _Engine()
    state = ServerState(engine, "m", None, Metrics(lambda: {"waiting": 0, "running": 0, "kv_cache_usage": 0.0}))
    req = CompletionRequest.model_validate({"model": "m", "prompt": "hello", "max_tokens": steps, "stream": True,
                                            "stream_options": {"include_usage": True}})
    chunks = [0]

    async def consume(gen):
        async for _ in gen:
            chunks[0] += 1

    tasks = [asyncio.create_task(consume(completion_stream(state, req))) for _ in range(streams)]
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    for step in range(steps):
        last = step == steps - 1
        items = []
        for s in engine.streams:
            out = RequestOutput(s.request_id, None, [1, 2, 3],
                                [CompletionOutput(0, "", [], None, "length" if last else None, None, " word", [7])],
                                last, metrics={})
            items.append((s, out))
            if last:
                items.append((s, _END))
        _put_all(items)
        while any(s._items for s in engine.streams):  # the step's chunks are made before the next step arrives
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    dt = time.perf_counter() - t0
    assert chunks[0] == streams * (steps + 2)  # a chunk per token, then usage and [DONE]
    return dt / (streams * steps) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if min(a.streams, a.steps, a.repeats) < 1:
        print("error: --streams, --steps and --repeats must be at least 1", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runs = [runner(one_run(a.streams, a.steps)) for _ in range(a.repeats)]
    print(f"{a.streams} streams x {a.steps} steps: us per chunk {[round(r, 2) for r in runs]}, "
          f"median {statistics.median(runs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
