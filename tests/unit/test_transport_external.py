"""The external connections' transport against loopback servers: a plain-HTTP server with nothing from the
environment in between is served by our ``h1`` client, under the per-host bound (a burst past it waits for
a slot, and a wait past the request's time is a timeout); a proxy or a ``~/.netrc`` entry for the URL,
``https://``, or ``own_client=False`` send it through aiohttp's client, and the proxy does receive it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from tests.waiting import wait_until

from superollama.gateway.h1 import H1Response
from superollama.gateway.transport import ConnectFailed
from superollama.gateway.transport_aiohttp import AiohttpResponse
from superollama.gateway.transport_external import ExternalTransport

JSON = (("Content-Type", "application/json"),)


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


class Backend:
    """An aiohttp server that answers JSON and SSE, counts requests in flight, and can hold them."""

    def __init__(self) -> None:
        self.inflight = 0
        self.most = 0
        self.release = asyncio.Event()
        self.release.set()
        self.seen: list[tuple[str, str | None, str | None]] = []  # path, Authorization, Accept-Encoding
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            (request.path_qs, request.headers.get("Authorization"), request.headers.get("Accept-Encoding"))
        )
        self.inflight += 1
        self.most = max(self.most, self.inflight)
        try:
            await self.release.wait()
            body = await request.read()
            if request.path.endswith("/stream"):
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                for i in range(3):
                    await response.write(b"data: %d\n\n" % i)
                await response.write_eof()
                return response
            return web.Response(body=b'{"echo":' + body + b"}", content_type="application/json")
        finally:
            self.inflight -= 1

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    yield b
    if b.runner is not None:
        await b.runner.cleanup()


async def test_plain_http_goes_through_h1_and_answers_json_and_streams(backend: Backend) -> None:
    base = await backend.start() + "/v1"
    transport = ExternalTransport(per_host=4)
    try:
        assert transport.own_client(base) is None  # decided on the first request
        async with await transport.post(base, "/chat", b'{"a":1}', JSON, timeout=10) as response:
            assert response.status == 200 and response.content_type == "application/json"
            assert await response.read() == b'{"echo":{"a":1}}'
        assert transport.own_client(base) is True
        async with await transport.post(base, "/stream", b"{}", JSON, timeout=10) as response:
            assert response.content_type == "text/event-stream"
            body = b"".join([chunk async for chunk in response.iter_any()])
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        # h1 asks for no compression: the server answers what the relay can pass through unread
        assert backend.seen == [("/v1/chat", None, None), ("/v1/stream", None, None)]
        with pytest.raises(ConnectFailed):
            await transport.post("http://127.0.0.1:9", "/x", b"{}", JSON, timeout=5)
    finally:
        await transport.close()


async def test_the_per_host_bound_holds_and_a_burst_waits_for_a_slot(backend: Backend) -> None:
    base = await backend.start()
    transport = ExternalTransport(per_host=2)
    backend.release.clear()

    async def one(i: int) -> bytes:
        async with await transport.post(base, "/x", b"%d" % i, JSON, timeout=30) as response:
            return await response.read()

    try:
        calls = [asyncio.create_task(one(i)) for i in range(5)]
        await wait_until(lambda: backend.inflight == 2, what="two requests at the backend")
        await wait_until(lambda: transport.waiting == 3, what="the other three queued for a slot")
        assert backend.inflight == 2 and len(backend.seen) == 2  # queued here, not sent
        backend.release.set()
        answers = await asyncio.gather(*calls)
        assert sorted(answers) == [b'{"echo":%d}' % i for i in range(5)]
        assert backend.most == 2
        # a wait for a slot is bounded by the request's time
        backend.release.clear()
        held = [asyncio.create_task(one(i)) for i in range(2)]
        await wait_until(lambda: backend.inflight == 2, what="two requests at the backend")
        with pytest.raises(TimeoutError, match="no connection to the backend was free"):
            await transport.post(base, "/x", b"{}", JSON, timeout=0.3)
        backend.release.set()
        await asyncio.gather(*held)
        # every slot came back: the bound's worth of requests run at once again
        backend.release.clear()
        again = [asyncio.create_task(one(i)) for i in range(2)]
        await wait_until(lambda: backend.inflight == 2, what="two requests at the backend")
        backend.release.set()
        await asyncio.gather(*again)
    finally:
        await transport.close()


async def test_a_proxy_from_the_environment_sends_it_through_aiohttp(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await backend.start()  # the stand-in proxy: it answers the absolute-form request itself
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    transport = ExternalTransport()
    try:
        response = await transport.post("http://backend.invalid/v1", "/chat", b"1", JSON, timeout=10)
        async with response:
            assert isinstance(response, AiohttpResponse)
            assert await response.read() == b'{"echo":1}'
        assert transport.own_client("http://backend.invalid/v1") is False
        assert backend.seen[0][0] == "/v1/chat"
    finally:
        await transport.close()


async def test_netrc_credentials_or_the_setting_keep_aiohttp(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base = await backend.start()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with_netrc = ExternalTransport()
    library_only = ExternalTransport(own_client=False)
    try:
        async with await with_netrc.post(base, "/x", b"1", JSON, timeout=10) as response:
            assert isinstance(response, AiohttpResponse)
            await response.read()
        assert backend.seen[-1][1] is not None and backend.seen[-1][1].startswith("Basic ")
        monkeypatch.setenv("NETRC", str(tmp_path / "none"))
        async with await library_only.post(base, "/x", b"2", JSON, timeout=10) as response:
            assert not isinstance(response, H1Response) and await response.read() == b'{"echo":2}'
        assert library_only.own_client(base) is False
    finally:
        await with_netrc.close()
        await library_only.close()
