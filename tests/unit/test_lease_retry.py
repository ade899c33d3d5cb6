"""A request whose instance is gone before it answered goes to the replacement, through the real ``Relay``
and ``Upstream`` on the real h1 client, against loopback backends: one that answers, a port where
nothing listens any more (a killed instance), one that reads the request and closes (a crash with the
request read), and one that dies halfway through its answer (a request in flight: never sent again).

The starter is the seam (``InstanceStarter``) that the controller and a replica's link implement: here it
records what it was asked and hands out the good backend, so that each decision can be checked exactly.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from superollama.control import Route, RouteTarget
from superollama.core import Endpoint
from superollama.errors import UpstreamError
from superollama.gateway.h1 import H1Client
from superollama.gateway.lease import Lease
from superollama.gateway.upstream import Upstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Starter:
    """Replaces any instance with ``good`` when the failure allows it (``crashed``: the process died)."""

    good: RouteTarget
    crashed: bool = True
    asked: list[tuple[str, bool]] = field(default_factory=list)

    async def ensure_ready(self, route: Route) -> RouteTarget:
        return self.good

    async def replace(self, route: Route, failed: str, *, reached: bool) -> RouteTarget | None:
        self.asked.append((failed, reached))
        return self.good if (self.crashed or not reached) else None


@dataclass
class Counts:
    """Requests in flight per instance, as the agent counts them."""

    now: dict[str, int] = field(default_factory=dict)

    def in_flight(self, instance_id: str) -> int:
        return self.now.get(instance_id, 0)

    def acquire(self, instance_id: str) -> None:
        self.now[instance_id] = self.now.get(instance_id, 0) + 1

    def release(self, instance_id: str) -> None:
        self.now[instance_id] -= 1

    def set_keep_alive(self, version: str, seconds: float | None) -> None:
        pass

    def expires_in(self, version: str) -> float | None:
        return None

    async def unload(self, version: str, *, reason: str = "requested") -> bool:
        return False


def _free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def _target(instance: str, port: int) -> RouteTarget:
    return RouteTarget(instance, Endpoint(f"http://127.0.0.1:{port}", "openai", "m"))


@pytest.fixture
async def good() -> AsyncIterator[tuple[RouteTarget, list[str]]]:
    """A backend that answers every chat; the bodies it received."""
    received: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        received.append(await request.text())
        return web.json_response({"choices": [{"message": {"content": "hello"}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield _target("inst-good", runner.addresses[0][1]), received
    finally:
        await runner.cleanup()


async def _raw_server(reply: bytes | None) -> tuple[int, asyncio.Server]:
    """Reads one request, sends ``reply`` (None: nothing), then closes the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        if reply is not None:
            writer.write(reply)
            await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return int(server.sockets[0].getsockname()[1]), server


async def _post(dead: RouteTarget, starter: Starter, counts: Counts) -> tuple[dict[str, object], Lease]:
    client = H1Client()
    route = Route("m", "m", True, 0, (dead,))
    lease = Lease(route, dead, starter, counts)
    try:
        return await Upstream(client, timeout=10).post(lease, "/v1/chat/completions", CHAT), lease
    finally:
        lease.release()
        await client.close()


async def test_an_instance_that_is_gone_before_the_request_reached_it_is_replaced(
    good: tuple[RouteTarget, list[str]],
) -> None:
    target, received = good
    dead = _target("inst-dead", _free_port())
    starter, counts = Starter(target, crashed=False), Counts()
    answer, lease = await _post(dead, starter, counts)
    assert answer["choices"] == [{"message": {"content": "hello"}}]
    assert starter.asked == [("inst-dead", False)]  # never reached: safe whatever became of it
    assert lease.instance_id == "inst-good" and len(received) == 1
    assert counts.now == {"inst-dead": 0, "inst-good": 0}  # counted on one instance at a time, then released


async def test_a_crash_after_reading_the_request_is_replaced_only_if_the_process_died(
    good: tuple[RouteTarget, list[str]],
) -> None:
    target, received = good
    port, server = await _raw_server(None)
    async with server:
        starter = Starter(target, crashed=True)
        answer, _ = await _post(_target("inst-crashed", port), starter, Counts())
        assert answer["choices"] and starter.asked == [("inst-crashed", True)]

        alive = Starter(target, crashed=False)  # the process still runs: it may be working on it
        with pytest.raises(UpstreamError, match="before answering") as failed:
            await _post(_target("inst-alive", port), alive, Counts())
        assert alive.asked == [("inst-alive", True)] and len(received) == 1
        assert "127.0.0.1" not in failed.value.message


async def test_a_request_the_backend_began_to_answer_is_never_sent_again(
    good: tuple[RouteTarget, list[str]],
) -> None:
    target, received = good
    port, server = await _raw_server(b'HTTP/1.1 200 OK\r\nContent-Length: 80\r\n\r\n{"choices"')
    async with server:
        starter = Starter(target)
        with pytest.raises(UpstreamError, match="mid-answer"):
            await _post(_target("inst-half", port), starter, Counts())
    assert starter.asked == [] and received == []


async def test_one_replacement_at_most(good: tuple[RouteTarget, list[str]]) -> None:
    dead, also_dead = _target("inst-1", _free_port()), _target("inst-2", _free_port())
    starter = Starter(also_dead, crashed=True)
    with pytest.raises(UpstreamError, match="cannot connect"):
        await _post(dead, starter, Counts())
    assert starter.asked == [("inst-1", False)]


async def test_a_connections_request_is_never_replaced(good: tuple[RouteTarget, list[str]]) -> None:
    target, _ = good
    dead = _target("conn", _free_port())
    starter, client = Starter(target), H1Client()
    lease = Lease(Route("c/m", "m", True, 0, (dead,), connection="c"), dead, starter, Counts())
    try:
        with pytest.raises(UpstreamError):
            await Upstream(client, timeout=10).post(lease, "/v1/chat/completions", CHAT)
    finally:
        await client.close()
    assert starter.asked == []
