"""The data plane's HTTP/1.1 client for backends: keep-alive connections, one request at a time each.

Every relayed request is one POST to a backend and one answer back, JSON or an SSE stream. A general
client (aiohttp's) costs about as much CPU per request as the rest of the gateway's hot path together:
URL objects, cookie jars, tracing signals, a header multidict per answer, a stream reader per body.
This one does the minimum, on ``asyncio.Protocol``:

* the request is one ``write`` (request line, ``Host``, ``Content-Length``, the caller's headers, body);
* the answer's status line and headers are parsed once, the body is framed by ``Content-Length``,
  ``Transfer-Encoding: chunked`` or the end of the connection, and handed over as it arrives
  (``read`` for the whole body, ``iter_any`` for a stream); a slow reader pauses the socket;
* a connection goes back to its pool only when its answer was read to the end and the server keeps it
  alive; anything else (an error, a client that went away mid-stream) closes it, which is what makes a
  backend stop generating;
* a pooled connection the server closed while it sat idle fails before any byte of the answer: the
  request is sent once more on a new connection (the backend never saw it);
* ``timeout`` bounds the whole exchange (connect, send, the last byte), ``connect_timeout`` the connect.

Errors follow the transport seam's contract (``transport``): ``ConnectFailed`` when no connection could
be made, ``NoAnswer`` when it ended before any byte of the answer, another ``UpstreamConnectionError``
once the answer had begun, ``TimeoutError``. The connection and its parser are ``h1_wire``; this module
is the pool.

Messages name the failure, never the backend's address (they reach clients).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from superollama.gateway.h1_wire import Connection, H1Response
from superollama.gateway.transport import ConnectFailed, NoAnswer, UpstreamConnectionError, os_reason

__all__ = ["ConnectFailed", "H1Client", "H1Response", "NoAnswer", "UpstreamConnectionError"]

_IDLE_LIMIT = 30.0  # seconds a pooled connection is trusted without use


class _Origin:
    """Where a base URL points: scheme, host, port and path prefix, parsed once per base URL."""

    __slots__ = ("host", "host_header", "port", "prefix", "tls")

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default else f"{host}:{self.port}"
        self.prefix = parts.path.rstrip("/")


class H1Client:
    """A pool of keep-alive connections per backend origin (no limit: the backends bound concurrency)."""

    def __init__(self, *, connect_timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self._connect_timeout = connect_timeout
        self._ssl = ssl_context
        self._idle: dict[tuple[str, int, bool], list[Connection]] = {}
        self._origins: dict[str, _Origin] = {}
        self._closed = False

    def _origin(self, base_url: str) -> _Origin:
        origin = self._origins.get(base_url)
        if origin is None:
            if len(self._origins) > 4096:
                self._origins.clear()
            origin = self._origins[base_url] = _Origin(base_url)
        return origin

    async def post(
        self, base_url: str, path: str, body: bytes, headers: Iterable[tuple[str, str]], *, timeout: float
    ) -> H1Response:
        """POST ``body`` to ``base_url + path``; the answer once its headers arrived (use it in
        ``async with`` so the connection goes back to the pool or is closed)."""
        origin = self._origin(base_url)
        lines = [
            f"POST {origin.prefix}{path} HTTP/1.1\r\nHost: {origin.host_header}\r\n"
            f"Content-Length: {len(body)}\r\n"
        ]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1") + body
        deadline = time.monotonic() + timeout
        conn = self._take(origin)
        pooled = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(origin, max(0.001, deadline - time.monotonic()))
                timeout = max(0.001, deadline - time.monotonic())
            try:
                return await conn.send(data, timeout)
            except asyncio.CancelledError:
                conn.abort()  # the caller went away before the answer began: nobody will read or release it
                raise
            except UpstreamConnectionError:
                if not pooled or conn.got_bytes:
                    raise
                # the server closed the idle connection as we sent: it never saw the request; once more
                # on a new connection
                conn, pooled = None, False

    def _take(self, origin: _Origin) -> Connection | None:
        idle = self._idle.get((origin.host, origin.port, origin.tls))
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            alive = conn.transport is not None and not conn.transport.is_closing()
            if alive and now - conn.idle_since < _IDLE_LIMIT:
                return conn
            conn.abort()
        return None

    def _put(self, conn: Connection) -> None:
        if self._closed:
            conn.abort()
            return
        self._idle.setdefault(conn.key, []).append(conn)

    async def _connect(self, origin: _Origin, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        key = (origin.host, origin.port, origin.tls)
        context: ssl.SSLContext | None = None
        if origin.tls:
            context = self._ssl or ssl.create_default_context()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(self._put, key),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                ),
                min(timeout, self._connect_timeout),
            )
        except TimeoutError:
            raise TimeoutError("could not connect to the backend in time") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to the backend ({os_reason(exc)})") from exc
        return conn

    async def close(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()
