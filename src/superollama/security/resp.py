"""A small asyncio Redis client for the rate limiter's hot path: RESP2 over one pipelined connection.

The limiter sends one ``EVALSHA`` per admission; a general-purpose client spends far more CPU on each
call than the round trip itself costs (connection-pool checkout, command-name lookups, response
callbacks, a retry wrapper). Here a call is: encode the arguments into one buffer, write it, append a
future to a FIFO; ``data_received`` parses as many complete replies as have arrived and resolves the
futures in order. Every caller shares the connection, so concurrent calls are pipelined for free.

Failure handling is what a limiter needs and no more:

* the connection is opened on first use (``AUTH``/``SELECT`` from the URL), and again after it is lost;
* a lost connection fails every call waiting on it with ``ConnectionError``;
* a reply that takes longer than ``timeout`` closes the connection (a stalled server stalls everything
  behind it on a pipelined connection anyway), failing the waiting calls with ``TimeoutError``; one
  watchdog timer checks the oldest waiting call instead of a timer per call;
* a Redis error reply raises ``RespError`` (``NoScript`` for ``NOSCRIPT``) for that call only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any, cast
from urllib.parse import unquote, urlsplit

__all__ = ["NoScript", "RespClient", "RespError"]

_CRLF = b"\r\n"


class RespError(Exception):
    """An error reply from Redis (``-ERR …``)."""


class NoScript(RespError):
    """``EVALSHA`` of a script the server does not have (``-NOSCRIPT``)."""


_PENDING = object()  # the parser needs more bytes


def encode(args: tuple[bytes | str | int | float, ...]) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = repr(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One reply from ``buf`` at ``pos``: ``(value, next position)``, or ``(_PENDING, pos)`` when the
    reply is not complete yet. Bulk strings are decoded as UTF-8; an error reply is a ``RespError``
    value (raised by the caller that asked)."""
    end = buf.find(_CRLF, pos)
    if end == -1:
        return _PENDING, pos
    kind = buf[pos]
    line = bytes(buf[pos + 1 : end])
    nxt = end + 2
    if kind == 0x24:  # $ bulk string
        size = int(line)
        if size < 0:
            return None, nxt
        if len(buf) < nxt + size + 2:
            return _PENDING, pos
        return bytes(buf[nxt : nxt + size]).decode("utf-8", "replace"), nxt + size + 2
    if kind == 0x2A:  # * array
        count = int(line)
        if count < 0:
            return None, nxt
        items = []
        for _ in range(count):
            item, nxt = parse(buf, nxt)
            if item is _PENDING:
                return _PENDING, pos
            items.append(item)
        return items, nxt
    if kind == 0x3A:  # : integer
        return int(line), nxt
    if kind == 0x2B:  # + simple string
        return line.decode(), nxt
    if kind == 0x2D:  # - error
        message = line.decode("utf-8", "replace")
        return (NoScript if message.startswith("NOSCRIPT") else RespError)(message), nxt
    raise RespError(f"unexpected reply type {chr(kind)!r} from Redis")


class _Protocol(asyncio.Protocol):
    def __init__(self, on_lost: Any) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._buf = bytearray()
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        waiting = self.waiting
        try:
            while pos < len(buf):
                value, nxt = parse(buf, pos)
                if value is _PENDING:
                    break
                pos = nxt
                if not waiting:
                    raise RespError("Redis sent a reply nobody asked for")
                future, _ = waiting.popleft()
                if future.done():
                    continue
                if isinstance(value, RespError):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        except (RespError, ValueError, IndexError) as exc:
            self.fail(ConnectionError(f"bad reply from Redis: {exc}"))
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def fail(self, exc: BaseException) -> None:
        """Fail every waiting call and drop the connection."""
        waiting, self.waiting = self.waiting, collections.deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self._on_lost(self)


class RespClient:
    """Redis at ``url`` (``redis://[user:password@]host[:port][/db]`` or ``unix:///path?db=N``)."""

    def __init__(self, url: str, *, timeout: float = 0.5) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} (redis:// or unix://)")
        self._unix = parts.path if parts.scheme == "unix" else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        db = query.get("db") or (parts.path.strip("/") if parts.scheme == "redis" else "")
        self._db = int(db) if db else 0
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._timeout = timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    async def call(self, *args: bytes | str | int | float) -> Any:
        """Send one command; its reply (``RespError`` raised for an error reply)."""
        proto = self._proto
        if proto is None or proto.transport is None:
            proto = await self._connect()
        return await self._send(proto, encode(args))

    def _send(self, proto: _Protocol, data: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        assert proto.transport is not None
        proto.transport.write(data)
        proto.waiting.append((future, loop.time()))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._check)
        return future

    def _check(self) -> None:
        """The watchdog: close the connection when its oldest waiting call is past the timeout."""
        self._watchdog = None
        proto = self._proto
        if proto is None or not proto.waiting or proto.transport is None:
            return
        loop = asyncio.get_running_loop()
        age = loop.time() - proto.waiting[0][1]
        if age >= self._timeout:
            proto.fail(TimeoutError(f"Redis did not answer within {self._timeout:g}s"))
            return
        self._watchdog = loop.call_later(self._timeout - age, self._check)

    def _lost(self, proto: _Protocol) -> None:
        if self._proto is proto:
            self._proto = None

    async def _connect(self) -> _Protocol:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            proto = await asyncio.wait_for(self._open(), self._timeout)
        except BaseException as exc:
            failure: Exception
            if isinstance(exc, asyncio.TimeoutError):
                failure = TimeoutError(f"could not connect to Redis within {self._timeout:g}s")
            elif isinstance(exc, Exception):
                failure = exc
            else:
                failure = ConnectionError("connecting to Redis was cancelled")
            self._connecting.set_exception(failure)
            self._connecting.exception()  # retrieved: no "never retrieved" warning without waiters
            self._connecting = None
            if failure is exc:
                raise
            raise failure from exc
        self._proto = proto
        self._connecting.set_result(proto)
        self._connecting = None
        return proto

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()

        def factory() -> _Protocol:
            return _Protocol(self._lost)

        if self._unix is not None:
            _, proto = await loop.create_unix_connection(factory, self._unix)
        else:
            _, proto = await loop.create_connection(factory, self._host, self._port)
        try:
            if self._password is not None:
                auth = (self._username, self._password) if self._username else (self._password,)
                await self._send(proto, encode(("AUTH", *auth)))
            if self._db:
                await self._send(proto, encode(("SELECT", self._db)))
        except BaseException:
            proto.fail(ConnectionError("Redis refused the connection's AUTH/SELECT"))
            raise
        return proto

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.fail(ConnectionError("client closed"))
        if self._connecting is not None:
            with contextlib.suppress(BaseException):
                await self._connecting
