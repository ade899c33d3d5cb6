"""The relay's SSE path between two real loopback aiohttp servers: a backend that sends its events and
``[DONE]`` but does not end its body, and a gateway app that relays with ``Relay``. The client's answer
must end at ``[DONE]`` (a client that stops there and hangs up is not a 499), and usage the client did
not ask for is read, then kept out of what it sees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web
from tests.doubles import NoCounts, NoStarter

from superollama.control import Route, RouteTarget
from superollama.core import Endpoint
from superollama.gateway.exchange import EXCHANGE, Exchange
from superollama.gateway.h1 import H1Client
from superollama.gateway.lease import Lease
from superollama.gateway.relay import Relay, _take_usage
from superollama.wire.openai import USAGE_KEY

EVENTS = [
    b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}],"usage":null}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}],"usage":null}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n',
    b"data: [DONE]\n\n",
]


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def setup() -> AsyncIterator[
    tuple[str, list[dict[str, object]], list[Exchange], asyncio.Event, list[bytes]]
]:
    release = asyncio.Event()  # the backend ends its body only when the test says so
    bodies: list[dict[str, object]] = []
    exchanges: list[Exchange] = []
    writes: list[bytes] = []  # what the gateway gave the client's connection, write by write

    async def backend(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.json())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in EVENTS:
            await response.write(event)
        await release.wait()
        await response.write_eof()
        return response

    back = web.Application()
    back.router.add_post("/v1/chat/completions", backend)
    back_runner, back_url = await _serve(back)
    client = H1Client()
    relay = Relay(client, timeout=30)
    target = RouteTarget("inst-1", Endpoint(back_url + "/v1", "openai", "m"))

    async def gateway(request: web.Request) -> web.StreamResponse:
        _record_writes(request, writes)
        ex = Exchange(request_id="r", protocol="openai")
        request[EXCHANGE] = ex
        exchanges.append(ex)
        body = await request.json()
        lease = Lease(Route("m", "m", True, 0, (target,)), target, NoStarter(), NoCounts())
        return await relay.forward(request, lease, "/chat/completions", body, stream=True)

    front = web.Application()
    front.router.add_post("/v1/chat/completions", gateway)
    front_runner, front_url = await _serve(front)
    try:
        yield front_url, bodies, exchanges, release, writes
    finally:
        release.set()
        await front_runner.cleanup()
        await back_runner.cleanup()
        await client.close()


async def test_the_answer_ends_at_done_and_usage_is_metered_but_not_shown(
    setup: tuple[str, list[dict[str, object]], list[Exchange], asyncio.Event, list[bytes]],
) -> None:
    url, bodies, exchanges, release, _ = setup
    async with aiohttp.ClientSession() as session:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with session.post(url + "/v1/chat/completions", json=body) as response:
            # read to the end of the body: this only returns if the relay ended it at [DONE],
            # since the backend's body stays open until `release`
            data = await asyncio.wait_for(response.read(), 10)
    assert not release.is_set()
    assert data == EVENTS[0] + EVENTS[1] + EVENTS[3]  # the usage-only event is not the client's
    assert orjson.loads(orjson.dumps(bodies[0]))["stream_options"] == {"include_usage": True}
    ex = exchanges[0]
    assert (ex.prompt_tokens, ex.completion_tokens) == (3, 2)
    assert ex.first_byte is not None


def _record_writes(request: web.Request, writes: list[bytes]) -> None:
    transport = request.transport
    assert transport is not None
    sent_by = transport.write

    def write(data: bytes) -> None:
        writes.append(bytes(data))
        sent_by(data)

    transport.write = write  # type: ignore[method-assign]
    transport.writelines = lambda chunks: write(b"".join(chunks))  # type: ignore[method-assign]


async def test_the_headers_go_out_with_the_first_event_and_done_with_the_end_of_the_body(
    setup: tuple[str, list[dict[str, object]], list[Exchange], asyncio.Event, list[bytes]],
) -> None:
    """A relayed stream costs the client's connection no write of its own for the status line and
    headers, nor one for the end of the chunked body: the first write carries the headers and the first
    event, the last one ``[DONE]`` and the body's end."""
    url, _, _, _, writes = setup
    async with aiohttp.ClientSession() as session:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with session.post(url + "/v1/chat/completions", json=body) as response:
            data = await asyncio.wait_for(response.read(), 10)
    assert data == EVENTS[0] + EVENTS[1] + EVENTS[3]
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and EVENTS[0] in writes[0], writes
    assert writes[-1].endswith(EVENTS[3] + b"\r\n0\r\n\r\n"), writes


class _Metered:
    def __init__(self) -> None:
        self.seen: list[tuple[int, int] | None] = []

    def usage(self, usage: tuple[int, int] | None) -> None:
        self.seen.append(usage)


_NULL = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}],"usage":null}\n\n'
_ALONE = b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4}}\n\n'
_WITH = b'data: {"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":9,"completion_tokens":1}}\n\n'


@pytest.mark.parametrize(
    ("events", "usage", "stripped"),
    [
        (_NULL * 3 + b"data: [DONE]\n\n", None, _NULL * 3 + b"data: [DONE]\n\n"),  # no usage object
        (_NULL + _ALONE + b"data: [DONE]\n\n", (7, 4), _NULL + b"data: [DONE]\n\n"),
        # "usage":null after the object (a backend that says it on every event): found looking back
        (_NULL + _ALONE + _NULL * 2, (7, 4), _NULL * 3),
        (_ALONE + _NULL, (7, 4), _NULL),  # the object opens the block
        (_WITH + _NULL, (9, 1), _WITH + _NULL),  # usage with choices: the client's event, kept whole
        (_NULL + _ALONE + _NULL + _ALONE, (7, 4), _NULL * 2),  # every usage-only event goes
        (b'data: {"text":"the word \\"usage\\" in a string"}\n\n', None, None),
    ],
    ids=["none", "last-but-one", "nulls-after", "first", "with-choices", "two", "in-a-string"],
)
@pytest.mark.parametrize("strip", [False, True], ids=["kept", "stripped"])
def test_usage_is_taken_from_the_last_usage_object_wherever_it_is(
    events: bytes, usage: tuple[int, int] | None, stripped: bytes | None, strip: bool
) -> None:
    metered = _Metered()
    last = events.rfind(USAGE_KEY)
    out = _take_usage(events, metered, strip, last) if last != -1 else events  # type: ignore[arg-type]
    assert metered.seen == ([] if usage is None else [usage])
    assert out == (stripped if strip and stripped is not None else events)
