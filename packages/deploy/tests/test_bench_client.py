"""bench-serve's lean HTTP client (`bench_client.RawClient`): response framings, line splitting across pieces,
keep-alive reuse, and the same results as httpx against the real server."""

import asyncio

import pytest

from shusheng.deploy.bench_client import RawClient
from shusheng.deploy.bench_serve import BenchServeConfig, run_benchmark

SSE = [b'data: {"a": 1}', b"", b'data: {"b": "\xc3\xa9 two"}', b"", b"data: [DONE]", b""]


def chunked(body: bytes, cuts: list[int]) -> bytes:
    """`body` with chunked transfer encoding, cut at `cuts` (so lines straddle chunks)."""
    out, prev = b"", 0
    for c in [*cuts, len(body)]:
        part = body[prev:c]
        out += f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n"
        prev = c
    return out + b"0\r\nX-Trailer: t\r\n\r\n"


async def serve_script(responses: list[bytes]):
    """A loopback server answering each request (any connection) with the next of `responses`; closes the
    connection after an answer without framing. Returns (server, port, seen) with `seen` the request heads."""
    seen, queue = [], list(responses)

    async def handle(reader, writer):
        while queue:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:  # the client closed the connection
                break
            seen.append(head)
            lengths = [int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")]
            length = lengths[0] if lengths else 0
            await reader.readexactly(length)
            answer = queue.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"content-length" not in answer.lower() and b"chunked" not in answer.lower():
                writer.close()
                return
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def test_framings_lines_and_keep_alive():
    body = b"\n".join(SSE)

    async def main():
        answers = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, [3, 10, 11, 30]),
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 7\r\n\r\nno way!",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body,  # until the server closes
        ]
        server, port, seen = await serve_script(answers)
        client = RawClient(f"http://127.0.0.1:{port}/prefix", {"Authorization": "Bearer k"})
        got = []
        for _ in range(2):
            async with client.stream("/v1/x", {"q": "é"}) as (status, lines, _):
                got.append((status, [line async for line in lines]))
        async with client.stream("/v1/x", {}) as (status, lines, read_rest):
            got.append((status, await read_rest()))
        status, text = await client.get("/v1/models")
        got.append((status, text))
        await client.aclose()
        server.close()
        return got, seen, client.opened

    got, seen, opened = asyncio.run(main())
    want = [s.decode() for s in SSE[:-1]]  # the lines; the body ends with a line end
    assert got[0] == (200, want) and got[1] == (200, want)  # chunks split mid-line, é split across two pieces
    assert got[2] == (400, b"no way!")
    assert got[3] == (200, body)
    assert opened == 1  # three answers read to the end on one kept-alive connection; the last one closed it
    assert seen[0].startswith(b"POST /prefix/v1/x HTTP/1.1\r\n") and b"Authorization: Bearer k\r\n" in seen[0]
    assert seen[3].startswith(b"GET /prefix/v1/models HTTP/1.1\r\n")


def test_a_connection_left_mid_response_is_not_reused():
    async def main():
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        server, port, _ = await serve_script([head + chunked(b"line 1\nline 2\n", [7]), head + chunked(b"x\n", [])])
        client = RawClient(f"http://127.0.0.1:{port}")
        with pytest.raises(RuntimeError):
            async with client.stream("/", {}) as (_, lines, _):
                async for _ in lines:
                    raise RuntimeError("the consumer fails after one line")
        server.close()
        return client._idle

    assert asyncio.run(main()) == []


def test_bad_urls_are_refused():
    with pytest.raises(ValueError, match="http"):
        RawClient("ftp://host")


@pytest.fixture(scope="module")
def server(tiny_ckpt, cli_server):
    with cli_server(tiny_ckpt, "--served-model-name", "tiny") as url:
        yield url


def test_raw_and_httpx_clients_get_the_same_results(server):
    """Against the real server: the same requests, token counts and successes with either client."""
    runs = {}
    for client in ("raw", "httpx"):
        cfg = BenchServeConfig(server, endpoint="completions", num_prompts=6, request_rate=50.0, seed=3,
                               input_len=(4, 8), output_len=(3, 6), client=client)
        runs[client] = asyncio.run(run_benchmark(cfg))
    for res in runs.values():
        assert res["completed"] == 6 and res["failed"] == 0
    counts = {c: [(r["prompt_tokens"], r["output_tokens"]) for r in res["requests"]] for c, res in runs.items()}
    assert counts["raw"] == counts["httpx"]
    assert runs["raw"]["config"]["client"] == "raw"
    with pytest.raises(ValueError, match="client"):
        BenchServeConfig(server, client="curl")
