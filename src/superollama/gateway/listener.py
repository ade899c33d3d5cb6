"""The HTTP edge of one worker: bounded client connections, in time and in number.

aiohttp bounds the idle time between requests (``keepalive_timeout``) and the size of a request line or
header line (``max_line_size``/``max_field_size``), but has no header read timeout, no body read timeout
and no connection cap. This module adds them at the narrowest seams aiohttp 3.14 offers:

* ``EdgeHandler``, a ``RequestHandler`` subclass (the per-connection protocol), keeps one timer handle
  (``loop.call_at``, no task; moved lazily, so a busy keep-alive connection arms none per request) for
  the phase the connection is in:

  - *head*: from the connection's start, or from a request's first byte, until its line and headers are
    parsed — ``http_header_timeout``; past it a 408 is written and the connection closed. aiohttp's own
    keep-alive timer is told to stand aside while a head is on its way (it would close it as idle);
  - *body*: between two reads of a request body — ``http_body_timeout``, not counted while the server
    itself stopped reading (flow control); past it the body fails with ``RequestTimeout``, which the error
    middleware renders as a 408 in the client's protocol, and the connection closes after that answer;
  - *idle* between requests: aiohttp's ``keepalive_timeout`` = ``http_idle_timeout``.

  Malformed requests (a garbage request line, a bad header, an invalid version) are answered with a JSON
  400 (431 for a line over ``max_header_bytes``) and logged as one WARNING line, never a traceback.
* ``ConnectionGate`` is the protocol factory of the client listeners (``GatedTCPSite``, ``GatedSockSite``:
  aiohttp's sites with the factory swapped). It counts open connections; past ``max_connections`` it
  hands the new connection to ``_Refusal``, which reads the request line (at most a second), answers 503
  with ``Retry-After`` and ``Connection: close`` in the protocol of the path, half-closes, and drops the
  connection. Refusals in progress are capped at the same number: past that, a connection is closed at
  once. The primary's Unix socket for the replicas' proxies is not gated (those are our own connections).

``too_large`` (asked first by ``RequestMiddleware``; ``refuse_oversized`` is the same as a middleware of
its own) answers 413 to a request whose ``Content-Length`` is over the app's body limit before any byte
of the body is read; a chunked body over it fails while being read (aiohttp's ``client_max_size``), also a
413.

These seams reach into aiohttp internals (``RequestHandler._process_keepalive``, ``_messages``,
``_request_count``, ``_lingering_time``, the sites' ``_sock``/``_host``): aiohttp is pinned (``==3.14.5``)
and ``tests/e2e/test_http_edge.py`` fails if an upgrade moves them. A request that arrives whole arms no
timer; feeding one keep-alive POST to ``data_received`` costs the same as aiohttp's own handler within
the noise of the measurement (in process, uvloop).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from superollama.errors import (
    HeadersTooLarge,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    ServerBusy,
    SuperOllamaError,
)
from superollama.gateway.errors import error_response
from superollama.settings import Settings
from superollama.wire.openai import error_body

__all__ = [
    "ConnectionGate",
    "ConnectionLimits",
    "EdgeHandler",
    "GatedSockSite",
    "GatedTCPSite",
    "make_runner",
    "refuse_oversized",
    "too_large",
]

log = logging.getLogger("superollama.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REFUSAL_WAIT = 1.0  # seconds a refused connection gets to send its request line (to pick the protocol)
_REFUSAL_LINGER = 1.0  # seconds it is then read (and discarded) so the client reads the 503, not a reset
_REFUSAL_LOG_EVERY = 10.0  # seconds between two WARNING lines about refused connections
_FD_RESERVE = 64  # open files kept for everything else (logs, the registry, listeners)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The bounds of every client connection of one worker (settings ``http_*``, ``max_*``)."""

    header_timeout: float = 20.0
    body_timeout: float = 60.0
    idle_timeout: float = 75.0
    max_connections: int = 1024
    max_header_bytes: int = 8190

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout=settings.http_header_timeout,
            body_timeout=settings.http_body_timeout,
            idle_timeout=settings.http_idle_timeout,
            max_connections=settings.max_connections,
            max_header_bytes=settings.max_header_bytes,
        )

    def handler_args(self) -> dict[str, Any]:
        """aiohttp's own per-connection bounds (for the runner, and so for the ungated Unix socket)."""
        return {
            "keepalive_timeout": self.idle_timeout,
            "max_line_size": self.max_header_bytes,
            "max_field_size": self.max_header_bytes,
            "access_log": None,
        }


def make_runner(app: web.Application, limits: ConnectionLimits) -> web.AppRunner:
    """The runner every server process uses: handler cancellation on disconnect, no aiohttp access log
    (telemetry writes one line per request), the limits' idle timeout and header sizes."""
    return web.AppRunner(app, handler_cancellation=True, **limits.handler_args())


def _fit_open_files(wanted: int) -> int:
    """How many connections the open-file limit allows: a client connection can hold a backend connection
    too, so two files each. The soft limit is raised toward the hard one when that is needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * wanted + _FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    fitted = max(1, (soft - _FD_RESERVE) // 2)
    log.warning(
        "max_connections %d does not fit the open-file limit %d: this worker takes %d", wanted, soft, fitted
    )
    return fitted


def _raw_error(exc: SuperOllamaError, *, ollama: bool) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for answers written outside aiohttp's
    request cycle (a refused connection, a head that never finished)."""
    body = orjson.dumps({"error": exc.message} if ollama else error_body(exc))
    head = [
        f"HTTP/1.1 {exc.status} {_REASONS.get(exc.status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if exc.retry_after is not None:
        head.append(f"Retry-After: {max(1, round(exc.retry_after))}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_REASONS = {408: "Request Timeout", 503: "Service Unavailable"}


def _malformed(exc: HttpProcessingError, limits_bytes: int) -> SuperOllamaError:
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and "too many headers" in exc.message.lower()
    ):
        return HeadersTooLarge(
            f"request header fields too large: a request line or header line is over {limits_bytes} bytes, "
            "or there are too many headers"
        )
    err = InvalidRequest(f"malformed HTTP request: {_short(exc.message)}")
    err.code = "malformed_request"
    return err


def _short(text: str, limit: int = 160) -> str:
    """One line (aiohttp's parser messages span several, with a caret under the bad byte), bounded."""
    text = " ".join(text.replace("^", " ").split())
    return text if len(text) <= limit else text[:limit] + "…"


class EdgeHandler(RequestHandler):
    """aiohttp's per-connection protocol plus header and body read timeouts (see the module docstring)."""

    __slots__ = (
        "_body",
        "_body_seen",
        "_body_timeout",
        "_gate",
        "_head_due",
        "_header_timeout",
        "_in_head",
        "_timer",
        "_timer_at",
    )

    def __init__(
        self, manager: Server, gate: ConnectionGate | None, limits: ConnectionLimits, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._header_timeout = limits.header_timeout
        self._body_timeout = limits.body_timeout
        self._timer: asyncio.TimerHandle | None = None  # one per connection, moved lazily (see _arm)
        self._timer_at = 0.0
        self._in_head = False  # a request's line and headers are on their way: the header timeout runs
        self._head_due = 0.0
        self._body: StreamReader | None = None  # a request body being received: the body timeout runs
        self._body_seen = 0.0  # loop time of the last bytes of that body

    # -- connection lifetime --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._body = None
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._close or self._force_close:
            return
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a head is complete: its body (if any) comes next
            self._in_head = False
            payload = self._messages[-1][1] if self._messages else None
            if payload is not None and not payload.is_eof():
                self._body = payload
                self._body_seen = now = self._loop.time()
                self._arm(now + self._body_timeout)
            return
        body = self._body
        if body is not None:
            if body.is_eof():
                self._body = None
            else:
                self._body_seen = self._loop.time()
        elif data and not self._in_head:
            self._await_head()  # the first bytes of the next request

    # -- timers ---------------------------------------------------------------------------------------
    def _await_head(self) -> None:
        self._in_head = True
        self._head_due = self._loop.time() + self._header_timeout
        self._arm(self._head_due)

    def _arm(self, due: float) -> None:
        """Make the timer fire by ``due``. A pending timer that fires earlier is kept (``_expire`` moves
        it on), so a busy keep-alive connection costs no timer operation per request."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= due:
                return
            timer.cancel()
        self._timer_at = due
        self._timer = self._loop.call_at(due, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        now = self._loop.time()
        if self._in_head:
            if self._request_in_progress:  # a pipelined head behind a request being answered: wait
                self._head_due = now + self._header_timeout
            if now < self._head_due:
                self._arm(self._head_due)
                return
            log.debug("closing a connection from %s: no complete request head in time", self.peername)
            timeout = RequestTimeout(
                f"request headers not received within {self._header_timeout:g} s; closing the connection"
            )
            self.transport.write(_raw_error(timeout, ollama=False))
            self.force_close()
            return
        body = self._body
        if body is None:
            return  # idle between requests: aiohttp's keep-alive timer decides
        if body.is_eof():
            self._body = None
            return
        due = self._body_seen + self._body_timeout
        if self._reading_paused or self._buffer_paused:  # we stopped reading, not the client
            due = now + self._body_timeout
        if now < due:
            self._arm(due)
            return
        self._body = None
        if not self._request_in_progress:  # answered already, the rest of the body being drained: stop
            self.force_close()
            return
        self._lingering_time = 0.0  # nothing left to drain: close once the 408 is written
        self.close()
        body.set_exception(
            RequestTimeout(f"request body stalled for {self._body_timeout:g} s; closing the connection")
        )

    def _process_keepalive(self) -> None:
        if self._in_head:  # a head is on its way: the header timeout decides, not the idle one
            self._keepalive_handle = None
            return
        super()._process_keepalive()

    # -- malformed requests ---------------------------------------------------------------------------
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        err = _malformed(exc, self.max_field_size)
        log.warning("refused a malformed request from %s: %s", request.remote, _short(exc.message))
        if request.writer.output_size > 0:
            raise ConnectionError("a response was sent already; cannot send the error")
        response = error_response(err)
        response.force_close()
        return response


class _Refusal(asyncio.Protocol):
    """A connection past the cap: answered 503 (in the protocol of its request line's path) and closed."""

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate
        self._loop = gate.loop
        self._transport: asyncio.Transport | None = None
        self._line = b""
        self._answered = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of it
        self._timer = self._loop.call_later(_REFUSAL_WAIT, self._answer)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            return  # read and dropped, so that closing does not reset the connection under the 503
        self._line += data
        if b"\n" in self._line or len(self._line) > 8192:
            self._answer()

    def eof_received(self) -> bool:
        if not self._answered:
            self._answer()
        return False  # close

    def _answer(self) -> None:
        if self._answered or self._transport is None or self._transport.is_closing():
            return
        self._answered = True
        if self._timer is not None:
            self._timer.cancel()
        parts = self._line.split(b"\n", 1)[0].split(b" ")
        ollama = len(parts) > 1 and parts[1].startswith(b"/api/")
        busy = ServerBusy(
            "the server is at its connection limit; retry after the time in Retry-After", retry_after=1
        )
        self._transport.write(_raw_error(busy, ollama=ollama))
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._timer = self._loop.call_later(_REFUSAL_LINGER, self._transport.close)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None
        self._gate.refused_done()


class ConnectionGate:
    """The protocol factory of one worker's client listeners: an ``EdgeHandler`` per connection while fewer
    than the cap are open, a ``_Refusal`` past it (and an immediate close past twice the cap)."""

    def __init__(self, runner: web.BaseRunner, limits: ConnectionLimits) -> None:
        server = runner.server
        if server is None:
            raise RuntimeError("set the runner up before gating its connections")
        self._server = server
        self._limits = limits
        self.loop = asyncio.get_running_loop()
        self.cap = _fit_open_files(limits.max_connections)
        self.open = 0
        self.refusing = 0
        self._refused = 0  # since the last WARNING line
        self._logged_at = float("-inf")
        self._handler_args = limits.handler_args()

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open < self.cap:
            self.open += 1
            return EdgeHandler(self._server, self, self._limits, loop=self.loop, **self._handler_args)
        self._note_refusal()
        if self.refusing >= self.cap:
            return _Dropped()
        self.refusing += 1
        return _Refusal(self)

    def release(self) -> None:
        self.open -= 1

    def refused_done(self) -> None:
        self.refusing -= 1

    def _note_refusal(self) -> None:
        self._refused += 1
        now = self.loop.time()
        if now - self._logged_at >= _REFUSAL_LOG_EVERY:
            log.warning(
                "connection limit reached (%d open): refused %d new connection(s) with 503",
                self.open,
                self._refused,
            )
            self._logged_at, self._refused = now, 0


class _Dropped(asyncio.Protocol):
    """Past twice the cap: closed at once, nothing read or written."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class GatedTCPSite(web.TCPSite):
    """aiohttp's ``TCPSite`` with ``ConnectionGate`` as its protocol factory."""

    def __init__(self, runner: web.BaseRunner, gate: ConnectionGate, host: str, port: int) -> None:
        super().__init__(runner, host, port, reuse_address=True)
        self._gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = await asyncio.get_running_loop().create_server(
            self._gate, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
        self._server = server
        self._bound_port = server.sockets[0].getsockname()[1] if server.sockets else self._port


class GatedSockSite(web.SockSite):
    """aiohttp's ``SockSite`` (a socket bound by someone else) with ``ConnectionGate`` as its factory."""

    def __init__(self, runner: web.BaseRunner, gate: ConnectionGate, sock: socket.socket) -> None:
        super().__init__(runner, sock)
        self._gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)
        self._server = await asyncio.get_running_loop().create_server(
            self._gate, sock=self._sock, backlog=self._backlog
        )


def too_large(request: web.Request) -> web.Response | None:
    """The 413 for a declared ``Content-Length`` over the body limit, before the body is read (the
    connection closes after it), or None. ``RequestMiddleware`` asks first thing; ``refuse_oversized``
    is the same check as a middleware of its own, for the apps that put another one before it."""
    declared = request.content_length
    if declared is None or declared <= request.client_max_size:
        return None
    exc = PayloadTooLarge(
        f"request body too large: Content-Length {declared} is over the limit of "
        f"{request.client_max_size} bytes"
    )
    response = error_response(exc, ollama=request.path.startswith("/api/"))
    response.force_close()
    return response


@web.middleware
async def refuse_oversized(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``too_large`` as a middleware."""
    refused = too_large(request)
    return refused if refused is not None else await handler(request)
