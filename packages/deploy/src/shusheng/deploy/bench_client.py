"""A lean HTTP/1.1 client for bench-serve's streamed requests (asyncio streams, keep-alive connections).

A benchmark client's own time per request lands in the latencies it reports. httpx's streaming path costs about
1 ms per request on a small CPU (build the request, its connection pool, line iteration); this client writes each
request in one send on a kept-alive connection and splits the response into lines as it arrives, which cuts that
to a few tenths (`benchmarks/ttft_breakdown.py --client raw` shows the difference). vLLM's and SGLang's serving
benchmarks use aiohttp for the same reason.

It speaks what an OpenAI-compatible server answers a POST with: a status line and headers, then a body sent with
`Transfer-Encoding: chunked` (SSE streams), with `Content-Length`, or until the connection closes. http:// and
https:// (the system's default TLS context); no proxies, redirects or compression (it asks for none). A
connection goes back to the pool only after its response was read to the end; one left mid-response (an error, a
timeout, a cancelled task) is closed.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit


class RawClient:
    """POSTs JSON and streams the response lines; GETs whole responses.

    Args:
        base_url: http://host[:port] or https://host[:port] (a path prefix is kept).
        headers: extra request headers (e.g. Authorization), sent with every request.
    """

    def __init__(self, base_url: str, headers: dict[str, str] | None = None):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the server URL must be http(s)://host[:port], got {base_url!r}")
        self._host = parts.hostname
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._port = parts.port or (443 if self._tls is not None else 80)
        self._prefix = parts.path.rstrip("/")
        host_header = self._host if parts.port is None else f"{self._host}:{self._port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {host_header}\r\nAccept-Encoding: identity\r\n{extra}"
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0  # connections opened so far

    async def _connect(self):
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        self.opened += 1
        return await asyncio.open_connection(self._host, self._port, ssl=self._tls)

    @asynccontextmanager
    async def _exchange(self, method: str, path: str, body: bytes | None):
        """Sends one request; yields (status, headers, reader). The caller reads the body with `_body`."""
        reader, writer = await self._connect()
        done = False
        try:
            head = f"{method} {self._prefix}{path} HTTP/1.1\r\n{self._head}"
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode("latin-1") + b"\r\n" + (body or b""))
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("the server closed the connection without answering")
            status = int(status_line.split(b" ", 2)[1])
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            state = {"done": False}
            yield status, headers, reader, state
            done = state["done"] and headers.get("connection", "").lower() != "close"
        finally:
            if done:
                self._idle.append((reader, writer))
            else:
                writer.close()

    @staticmethod
    async def _body(headers: dict, reader: asyncio.StreamReader, state: dict) -> AsyncIterator[bytes]:
        """The response body's pieces as they arrive; sets state["done"] once it was read to the end."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    break
                data = await reader.readexactly(size)
                await reader.readexactly(2)  # the chunk's CRLF
                yield data
        elif "content-length" in headers:
            n = int(headers["content-length"])
            if n:
                yield await reader.readexactly(n)
        else:  # until the server closes
            while data := await reader.read(65536):
                yield data
            state["done"] = False
            return
        state["done"] = True

    @asynccontextmanager
    async def stream(self, path: str, payload: dict):
        """POST `payload` as JSON; yields (status, lines, read_rest): the body's lines as str (without line
        ends) as they arrive, and a coroutine function returning the whole body as bytes (for error answers)."""
        async with self._exchange("POST", path, json.dumps(payload).encode()) as (status, headers, reader, state):
            pieces = self._body(headers, reader, state)

            async def lines() -> AsyncIterator[str]:
                buf = b""
                async for data in pieces:
                    buf += data
                    *complete, buf = buf.split(b"\n")
                    for line in complete:
                        yield line.rstrip(b"\r").decode("utf-8", errors="replace")
                if buf:
                    yield buf.rstrip(b"\r").decode("utf-8", errors="replace")

            async def read_rest() -> bytes:
                return b"".join([data async for data in pieces])

            yield status, lines(), read_rest
            async for _ in pieces:  # a normal exit (e.g. after `data: [DONE]`): read to the end, keep the connection
                pass

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET `path`: (status, body)."""
        async with self._exchange("GET", path, None) as (status, headers, reader, state):
            return status, b"".join([data async for data in self._body(headers, reader, state)])

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()
