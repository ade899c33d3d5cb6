"""The external-connection transport (aiohttp's client behind our seam) against loopback servers: its
errors are the seam's (``ConnectFailed``, ``NoAnswer``, a break mid-answer), in words without the
address; an answer streams; and ``HTTP_PROXY`` from the environment is honoured (a local stand-in proxy
receives the absolute-form request for a host that does not exist)."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from superollama.gateway.transport import ConnectFailed, NoAnswer, UpstreamConnectionError
from superollama.gateway.transport_aiohttp import AiohttpTransport

JSON = (("Content-Type", "application/json"),)


def _free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


async def _raw_server(reply: bytes | None) -> tuple[int, asyncio.Server]:
    """Reads a request head, sends ``reply`` (None: nothing), then resets the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if reply is not None:
            writer.write(reply)
            await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return int(server.sockets[0].getsockname()[1]), server


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    t = AiohttpTransport(per_host=4)
    yield t
    await t.close()


async def test_failures_are_the_seams_without_the_address(transport: AiohttpTransport) -> None:
    port = _free_port()
    with pytest.raises(ConnectFailed, match="cannot connect") as refused:
        await transport.post(f"http://127.0.0.1:{port}", "/v1/x", b"{}", JSON, timeout=10)
    assert "127.0.0.1" not in str(refused.value) and str(port) not in str(refused.value)
    port, server = await _raw_server(None)
    async with server:
        with pytest.raises(NoAnswer):
            await transport.post(f"http://127.0.0.1:{port}", "/v1/x", b"{}", JSON, timeout=10)
    port, server = await _raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{")
    async with server:
        response = await transport.post(f"http://127.0.0.1:{port}", "/v1/x", b"{}", JSON, timeout=10)
        async with response:
            with pytest.raises(UpstreamConnectionError, match="mid-answer"):
                await response.read()


async def test_an_answer_streams_and_http_proxy_is_honoured(
    transport: AiohttpTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.StreamResponse:
        seen.append(str(request.url))  # the absolute-form target a client sends to a proxy
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(b"data: %d\n\n" % i)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{runner.addresses[0][1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        response = await transport.post("http://backend.invalid", "/v1/chat", b"{}", JSON, timeout=10)
        async with response:
            assert response.status == 200 and response.content_type == "text/event-stream"
            body = b"".join([chunk async for chunk in response.iter_any()])
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert seen == ["http://backend.invalid/v1/chat"]
    finally:
        await runner.cleanup()


async def test_netrc_credentials_are_sent_unless_the_request_has_its_own(
    transport: AiohttpTransport, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What ``trust_env`` did per request, read once per backend: a ``~/.netrc`` entry for the host
    becomes Basic auth, and a request that carries its own ``Authorization`` keeps it."""
    seen: list[str | None] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/x", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        for headers in (JSON, (*JSON, ("Authorization", "Bearer own"))):
            async with await transport.post(base, "/v1/x", b"{}", headers, timeout=10) as response:
                assert response.status == 200
                await response.read()
    finally:
        await runner.cleanup()
    assert seen == [f"Basic {base64.b64encode(b'user:secret').decode()}", "Bearer own"]
