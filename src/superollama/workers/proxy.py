"""A replica's proxy to the primary: every path the replica does not serve itself goes to ``primary.sock``.

Byte for byte, streaming both ways: the method, the raw path and query, the headers (less the hop-by-hop
ones) and the body go up as they arrive; the status, headers and body come back as they arrive, never
decoded or re-encoded. A client that goes away closes the upstream connection (the handler is
cancelled). The only header added is the client's address (``X-Superollama-Client``), which the primary
trusts on its Unix socket only. While the primary is restarting, the answer is a 503 with ``Retry-After``
in the protocol the path speaks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from superollama.errors import Unavailable
from superollama.gateway import error_response
from superollama.workers.context import FORWARDED_CLIENT

__all__ = ["PrimaryProxy"]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "expect",  # answered here already (100-continue)
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_SKIP_AUTO = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PrimaryProxy:
    def __init__(self, socket_path: Path) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(socket_path), limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            skip_auto_headers=_SKIP_AUTO,
        )
        self._route: web.AbstractRoute | None = None

    def register(self, app: web.Application) -> None:
        """The catch-all route: register it after every route the replica serves itself."""
        self._route = app.router.add_route("*", "/{tail:.*}", self.handle)

    def middleware(self) -> Any:
        """Put first: a proxied request skips the replica's own middlewares (no double authentication,
        metering or rate limiting: the primary does all of it)."""

        @web.middleware
        async def proxy_first(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.match_info.route is self._route:
                return await self.handle(request)
            return await handler(request)

        return proxy_first

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)
        headers[FORWARDED_CLIENT] = request.remote or ""
        body = request.content.iter_any() if request.body_exists else None
        url = URL("http://primary" + request.raw_path, encoded=True)
        try:
            upstream = await self._session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            )
        except (aiohttp.ClientConnectionError, OSError):
            retry = Unavailable("the primary worker is restarting; try again", retry_after=1)
            return error_response(retry, ollama=request.path.startswith("/api/"))
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def close(self) -> None:
        await self._session.close()
