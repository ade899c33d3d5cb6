"""``bench/bare.py``, the bare relay the benchmark measures as its strictest baseline: it must really relay
(a baseline that answered less would flatter nothing and mislead everything), so it is checked here, in
process and on loopback, against an aiohttp upstream: JSON and event-stream answers byte for byte, paths
and bodies as sent, keep-alive, and two requests written at once answered in order. ``--server aiohttp``
(aiohttp's server over the same client) is checked the same way."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bare

from superollama.gateway.h1 import H1Client

EVENTS = b"".join(b'data: {"n": %d}\n\n' % i for i in range(20)) + b"data: [DONE]\n\n"


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[tuple[str, bytes]]]]:
    seen: list[tuple[str, bytes]] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append((request.path, body))
        if request.path.startswith("/stream/"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(0, len(EVENTS), 97):  # in pieces, as a backend streams
                await response.write(EVENTS[i : i + 97])
            await response.write_eof()
            return response
        return web.json_response({"path": request.path, "size": len(body)})

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), seen
    finally:
        await server.close()


@pytest.fixture(params=["bare", "aiohttp"])
async def relay(
    request: pytest.FixtureRequest, upstream: tuple[str, list[tuple[str, bytes]]]
) -> AsyncIterator[tuple[str, list[tuple[str, bytes]]]]:
    base, seen = upstream
    client = H1Client()
    if request.param == "bare":
        listener = await asyncio.get_running_loop().create_server(
            lambda: bare.BareRelay(client, base), "127.0.0.1", 0
        )
        port = listener.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}", seen
        finally:
            listener.close()
            await client.close()
    else:
        server = TestServer(bare.aiohttp_app(client, base), host="127.0.0.1")
        await server.start_server()
        try:
            yield str(server.make_url("")).rstrip("/"), seen
        finally:
            await server.close()
            await client.close()


async def test_json_and_event_streams_are_relayed_whole_on_one_connection(
    relay: tuple[str, list[tuple[str, bytes]]],
) -> None:
    base, seen = relay
    connector = aiohttp.TCPConnector(limit=1)  # every request on the same kept-alive connection
    async with aiohttp.ClientSession(connector=connector) as session:
        for size in (0, 10, 5000):
            async with session.post(f"{base}/v1/chat/completions", data=b"x" * size) as answer:
                assert answer.status == 200
                assert await answer.json() == {"path": "/v1/chat/completions", "size": size}
        async with session.post(f"{base}/stream/v1/chat/completions", data=b"{}") as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"] == "text/event-stream"
            assert await answer.read() == EVENTS
    assert [path for path, _ in seen] == ["/v1/chat/completions"] * 3 + ["/stream/v1/chat/completions"]
    assert [len(body) for _, body in seen] == [0, 10, 5000, 2]


async def test_requests_written_at_once_are_answered_in_order(
    relay: tuple[str, list[tuple[str, bytes]]],
) -> None:
    base, _ = relay
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz"
        )
        for path, size in (("/a", 3), ("/b", 1)):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(
                next(
                    line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
                ).split(b":")[1]
            )
            body = await reader.readexactly(length)
            assert body == b'{"path": "%s", "size": %d}' % (path.encode(), size)
    finally:
        writer.close()
