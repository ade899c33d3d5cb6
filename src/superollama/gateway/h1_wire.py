"""One HTTP/1.1 keep-alive connection of ``h1.H1Client`` and the answer it parses (see ``h1`` for why).

``Connection`` is an ``asyncio.Protocol``: it writes one request, parses the status line and headers once,
frames the body (``Content-Length``, chunked, or until close) and feeds it to the ``H1Response`` of the
request in flight; a slow reader pauses the socket. How a connection ended is classified here, in the
transport seam's words (``transport.NoAnswer`` before any byte of the answer, ``UpstreamConnectionError``
after), since only the connection knows how far its exchange got. The pool (which connections are kept,
which are reused) is ``h1.H1Client``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

from superollama.gateway.transport import NoAnswer, UpstreamConnectionError, os_reason

__all__ = ["Connection", "H1Response"]

_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024
_HIGH_WATER = 512 * 1024  # buffered answer bytes before the socket is paused
_TIMER_SLACK = 0.001  # seconds: how early a timer may fire (uvloop keeps time in milliseconds)

# parser states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class H1Response:
    """A backend's answer: ``status``, ``reason``, ``headers`` (lower-case names), then its body."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_eof",
        "_error",
        "_size",
        "_waiter",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    async def read(self) -> bytes:
        """The whole body."""
        while not self._eof:
            await self._wait()
        if self._error is not None:
            raise self._error
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body in the pieces it arrives in."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._size = 0
                self._conn.resume()
                yield data
                continue
            if self._eof:
                if self._error is not None:
                    raise self._error
                return
            await self._wait()

    async def _wait(self) -> None:
        if self._error is not None and not self._chunks:
            raise self._error
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    # -- fed by the connection ----------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if self._eof:
            return
        self._eof = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def complete(self) -> bool:
        return self._eof and self._error is None

    async def __aenter__(self) -> H1Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._conn.release(self)


class Connection(asyncio.Protocol):
    """One keep-alive connection: parses the answer to the request in flight into its ``H1Response``."""

    def __init__(self, put: Callable[[Connection], None], key: tuple[str, int, bool]) -> None:
        self._put = put
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._state = _DONE
        self._remaining = 0
        self._response: H1Response | None = None
        self._head: asyncio.Future[H1Response] | None = None
        self._keep_alive = True
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None  # one per connection, moved lazily (see ``send``)
        self._timer_at = 0.0
        self._due = 0.0  # loop time at which the exchange in flight times out (0: none in flight)
        self._timeout = 0.0
        self.got_bytes = False
        self.used = 0
        self.idle_since = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._state == _DONE:  # nothing asked: a server talking out of turn is not reused
            self._keep_alive = False
            self.abort()
            return
        self.got_bytes = True
        self._buf += data
        try:
            self._parse()
        except ValueError as exc:
            self._fail(UpstreamConnectionError(f"invalid HTTP answer from the backend: {exc}"))

    def eof_received(self) -> bool | None:
        self._keep_alive = False
        if self._state == _UNTIL_CLOSE:
            self._complete()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._keep_alive = False
        self._stop_timer()
        if self._state == _UNTIL_CLOSE:
            self._complete()
        elif self._state == _HEAD and not self.got_bytes:
            reason = f" ({os_reason(exc)})" if exc else ""
            self._fail(NoAnswer(f"the backend closed the connection before answering{reason}"))
        elif self._state != _DONE:
            reason = f" ({os_reason(exc)})" if exc else ""
            self._fail(UpstreamConnectionError(f"the backend closed the connection mid-answer{reason}"))

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    # -- one exchange -------------------------------------------------------------------------------
    def send(self, data: bytes, timeout: float) -> asyncio.Future[H1Response]:
        loop = asyncio.get_running_loop()
        if self.transport is None:  # reset between the connect and now: nothing was sent
            gone = loop.create_future()
            gone.set_exception(NoAnswer("the backend closed the connection before answering"))
            return gone
        self._state, self._response, self.got_bytes = _HEAD, None, False
        self._head = loop.create_future()
        # The connection's timer is left where it is when it fires no later than this exchange's deadline
        # (``_expire`` moves it on): a keep-alive connection makes and cancels no timer per request.
        self._timeout = timeout
        due = self._due = loop.time() + timeout
        timer = self._timer
        if timer is None or self._timer_at > due:
            if timer is not None:
                timer.cancel()
            self._timer_at = due
            self._timer = loop.call_at(due, self._expire)
        self.used += 1
        self.transport.write(data)
        return self._head

    def _expire(self) -> None:
        self._timer = None
        due = self._due
        if not due:
            return  # no exchange in flight: the next one arms the timer again
        loop = asyncio.get_running_loop()
        if due - loop.time() > _TIMER_SLACK:  # the exchange that armed it ended; this one is not due yet
            self._timer_at = due
            self._timer = loop.call_at(due, self._expire)
            return
        self._fail(TimeoutError(f"the backend did not finish answering within {self._timeout:g}s"))

    def _stop_timer(self) -> None:
        self._due = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def release(self, response: H1Response) -> None:
        """The caller is done with ``response``: pool the connection if the answer ended cleanly."""
        if self._response is not response:
            return
        self._response = None
        if response.complete and self._state == _DONE and self._keep_alive and self.transport is not None:
            self.resume()
            self.idle_since = time.monotonic()
            self._put(self)
        else:
            self._state = _DONE
            self.abort()

    def abort(self) -> None:
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def _fail(self, exc: BaseException) -> None:
        state, self._state = self._state, _DONE
        self._keep_alive = False
        self._stop_timer()
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        elif self._response is not None and state != _DONE:
            self._response._finish(exc)
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def _complete(self) -> None:
        self._state = _DONE
        self._due = 0.0  # the timer stays armed for the connection's next exchange
        if self._buf:  # bytes past the end of the answer: the connection is out of step
            self._keep_alive = False
            self._buf.clear()
        if self._response is not None:
            self._response._finish()

    def _parse(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(_HEAD_END)
                if end == -1:
                    if len(buf) > _MAX_HEAD:
                        raise ValueError("header section too large")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                if not self._start(head):
                    continue  # an interim 1xx answer: the real one follows
            elif state == _LENGTH:
                if not buf:
                    return
                if self._take_body() == 0:
                    self._complete()
                    return
            elif state == _CHUNK_SIZE:
                end = buf.find(_CRLF)
                if end == -1:
                    if len(buf) > 1024:
                        raise ValueError("chunk size line too long")
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0].strip(), 16)
                del buf[: end + 2]
                self._state, self._remaining = (_CHUNK_DATA, size) if size else (_TRAILER, 0)
            elif state == _CHUNK_DATA:
                if not buf:
                    return
                if self._take_body() == 0:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != _CRLF:
                    raise ValueError("chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(_CRLF)
                if end == -1:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._complete()
                    return
            elif state == _UNTIL_CLOSE:
                if buf:
                    self._deliver(bytes(buf))
                    buf.clear()
                return
            else:
                return

    def _start(self, head: bytes) -> bool:
        """Status line and headers; False for an interim (1xx) answer."""
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ValueError(f"bad status line {lines[0][:80]!r}")
        status = int(code)
        if 100 <= status < 200 and status != 101:
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        response = self._response = H1Response(self)
        response.status, response.reason, response.headers = status, reason, headers
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            self._keep_alive = "keep-alive" in connection
        elif "close" in connection:
            self._keep_alive = False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            self._remaining = int(headers["content-length"])
            self._state = _LENGTH
        elif status in (204, 304):
            self._remaining = 0
            self._state = _LENGTH
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
        head_future, self._head = self._head, None
        if head_future is not None and not head_future.done():
            head_future.set_result(response)
        if self._state == _LENGTH and self._remaining == 0:
            self._complete()
        return True

    def _take_body(self) -> int:
        """Hand over what the buffer holds of the ``_remaining`` body bytes; how many are still due."""
        buf = self._buf
        take = min(self._remaining, len(buf))
        self._deliver(bytes(buf[:take]))
        del buf[:take]
        self._remaining -= take
        return self._remaining

    def _deliver(self, data: bytes) -> None:
        if self._response is not None:
            self._response._feed(data)
