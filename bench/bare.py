"""The bare relay: what a Python proxy costs on one core with no web framework at all, to tell the
framework's share of a request from a gateway's own.

    bare.py PORT UPSTREAM_URL [--server bare|aiohttp]

Both servers relay every request to ``UPSTREAM_URL`` + the same path through Super Ollama's own backend
client (``superollama.gateway.h1.H1Client``, the client its instances are reached with), so the only
difference between them, and between ``--server aiohttp`` and ``floor.py``, is one layer:

- ``bare`` (the default): an ``asyncio.Protocol`` on uvloop that finds the head's end, reads
  ``Content-Length`` and the path, and writes the whole answer in one ``write`` (an event stream as
  chunked events, each in one write). One task a request, as aiohttp makes. Keep-alive; requests on one
  connection are answered in order. Nothing else: no chunked request bodies, no limits, no timeouts.
- ``aiohttp``: ``floor.py``'s aiohttp web server (one catch-all route, no middleware) over the same
  client: ``floor.py`` minus aiohttp's client.

So ``floor.py`` minus ``aiohttp`` is aiohttp's client, and ``aiohttp`` minus ``bare`` its web server.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from collections.abc import Callable

import uvloop
from aiohttp import web

from superollama.gateway.h1 import H1Client

_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
_JSON = (("Content-Type", "application/json"),)
_TIMEOUT = 60.0
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 502: b"Bad Gateway"}


def _head(status: int, content_type: str, length: int | None) -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    reason = _REASONS.get(status, b"Status")
    kind = content_type.encode()
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s\r\n\r\n" % (status, reason, kind, framing)


class BareRelay(asyncio.Protocol):
    """One client connection: requests parsed from its bytes, answered one after the other."""

    def __init__(self, client: H1Client, upstream: str) -> None:
        self._client = client
        self._upstream = upstream
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end == -1:
            return
        found = _LENGTH.search(buf, 0, end + 2)
        size = int(found.group(1)) if found else 0
        if len(buf) < end + 4 + size:
            return
        path = bytes(buf[: buf.find(b"\r\n")]).split(b" ", 2)[1].decode("latin-1")
        body = bytes(buf[end + 4 : end + 4 + size])
        del buf[: end + 4 + size]
        self._busy = True
        asyncio.get_running_loop().create_task(self._relay(path, body))

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    async def _relay(self, path: str, body: bytes) -> None:
        try:
            answer = await self._client.post(self._upstream, path, body, _JSON, timeout=_TIMEOUT)
            async with answer:
                if answer.content_type == "text/event-stream":
                    self._write(_head(answer.status, "text/event-stream", None))
                    async for chunk in answer.iter_any():
                        self._write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self._write(b"0\r\n\r\n")
                else:
                    data = await answer.read()
                    self._write(_head(answer.status, "application/json", len(data)) + data)
        except Exception as exc:  # a bench relay: say what failed, and keep serving
            message = str(exc).encode()
            self._write(_head(502, "text/plain", len(message)) + message)
        self._busy = False
        if self._transport is not None:
            self._next()


def aiohttp_app(client: H1Client, upstream: str) -> web.Application:
    """``floor.py``'s server over ``client``."""

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        answer = await client.post(upstream, request.path_qs, body, _JSON, timeout=_TIMEOUT)
        async with answer:
            if answer.content_type != "text/event-stream":
                data = await answer.read()
                return web.Response(body=data, status=answer.status, content_type="application/json")
            response = web.StreamResponse(status=answer.status, headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for chunk in answer.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


async def main(port: int, upstream: str, server: str) -> None:
    client = H1Client()
    loop = asyncio.get_running_loop()
    close: Callable[[], object]
    if server == "bare":
        listener = await loop.create_server(lambda: BareRelay(client, upstream), "127.0.0.1", port)
        close = listener.close
    else:
        runner = web.AppRunner(aiohttp_app(client, upstream), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        close = runner.cleanup
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    closing = close()
    if asyncio.iscoroutine(closing):
        await closing
    await client.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("port", type=int)
    ap.add_argument("upstream")
    ap.add_argument("--server", choices=("bare", "aiohttp"), default="bare")
    args = ap.parse_args()
    uvloop.run(main(args.port, args.upstream.rstrip("/"), args.server))
