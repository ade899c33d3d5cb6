"""A transport that answers from a function, in process (httpx's ``MockTransport``, for our seam).

Unit tests mount it where the gateway would use h1 or aiohttp (``gateway.transport.Mounts``), so that
each backend's behaviour is one line of the test: an answer, a stream that waits on an event, or one of
the seam's errors (``ConnectFailed``, ``NoAnswer``, a break mid-answer). Every request is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self

import orjson

from superollama.gateway.transport import UpstreamConnectionError


@dataclass(frozen=True)
class Sent:
    """One request the transport was given."""

    base_url: str
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...]

    def json(self) -> object:
        return orjson.loads(self.body)


@dataclass
class Reply:
    """An answer: ``chunks`` are the body's pieces; ``hold`` (if set) is awaited before the first piece;
    ``broken`` ends the body with a mid-answer error after the pieces."""

    status: int = 200
    chunks: Sequence[bytes] = (b"{}",)
    content_type: str = "application/json"
    hold: asyncio.Event | None = None
    broken: bool = False
    closed: bool = field(default=False, init=False)

    @classmethod
    def json(cls, obj: object, status: int = 200) -> Reply:
        return cls(status, (orjson.dumps(obj),))

    @classmethod
    def sse(cls, events: Sequence[bytes], *, hold: asyncio.Event | None = None) -> Reply:
        return cls(200, tuple(events), "text/event-stream", hold=hold)


class MockResponse:
    """``transport.BackendResponse`` over a ``Reply``."""

    def __init__(self, reply: Reply) -> None:
        self._reply = reply
        self.status = reply.status
        self.reason = "OK" if reply.status < 400 else "Error"
        self.headers: Mapping[str, str] = {"content-type": reply.content_type}

    @property
    def content_type(self) -> str:
        return self._reply.content_type

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_any()])

    async def iter_any(self) -> AsyncIterator[bytes]:
        if self._reply.hold is not None:
            await self._reply.hold.wait()
        for chunk in self._reply.chunks:
            yield chunk
        if self._reply.broken:
            raise UpstreamConnectionError("the backend closed the connection mid-answer")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._reply.closed = True


Handler = Callable[[Sent], Reply | Awaitable[Reply]]


class MockTransport:
    """``transport.Transport``: ``handler`` answers each request (or raises the seam's errors)."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.sent: list[Sent] = []
        self.closed = False

    async def post(
        self, base_url: str, path: str, body: bytes, headers: Iterable[tuple[str, str]], *, timeout: float
    ) -> MockResponse:
        sent = Sent(base_url, path, body, tuple(headers))
        self.sent.append(sent)
        reply = self._handler(sent)
        if not isinstance(reply, Reply):
            reply = await reply
        return MockResponse(reply)

    async def close(self) -> None:
        self.closed = True

    def to(self, base_url: str) -> list[Sent]:
        """The requests sent to ``base_url``."""
        return [s for s in self.sent if s.base_url == base_url]
