"""The transport of external connections: our own HTTP/1.1 client where nothing stands between the gateway
and the server, aiohttp's client where something does.

An external connection is often a plain-HTTP server on the same network (a vLLM, an Ollama, a TGI
somebody else runs): for those, aiohttp's client is the largest single cost of a relayed request (on
the bench's chat relay it executes more instructions per request than the rest of the gateway's path;
``bench/instructions.py``), and ``h1`` does the same exchange for a fraction of it, as it does for the
instances we run. What aiohttp's client brings matters only where it applies, and that is decided once
per base URL, from the environment read once (``transport_aiohttp.env_route``):

* ``https://``: TLS through a maintained client → aiohttp;
* a proxy from ``HTTP_PROXY`` / ``NO_PROXY`` for that URL → aiohttp (``h1`` speaks to no proxy);
* a ``~/.netrc`` entry for the host → aiohttp (it adds the credentials);
* otherwise (``http://``, no proxy, no credentials from the environment) → ``h1``.

The bound on connections per host (``external_pool_limit``) holds on both: aiohttp's connector bounds its
own; on ``h1`` a semaphore per host and port is taken before the request and given back when the answer
is left (``async with``), so a burst queues here, as it does on aiohttp. ``h1`` sends no
``Accept-Encoding``, so servers answer uncompressed (aiohttp asks for gzip and inflates it).
``SUPEROLLAMA_EXTERNAL_OWN_CLIENT=false`` sends every external request through aiohttp's client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Self
from urllib.parse import urlsplit

from superollama.gateway.h1 import H1Client, H1Response
from superollama.gateway.transport import BackendResponse
from superollama.gateway.transport_aiohttp import AiohttpTransport, env_route

__all__ = ["ExternalTransport"]

_LIBRARY = None  # a route through aiohttp's client


class _Slotted:
    """An ``h1`` answer that gives its host's connection slot back when it is left."""

    __slots__ = ("_response", "_slots")

    def __init__(self, response: H1Response, slots: asyncio.Semaphore) -> None:
        self._response = response
        self._slots = slots

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def reason(self) -> str:
        return self._response.reason

    @property
    def headers(self) -> dict[str, str]:
        return self._response.headers

    @property
    def content_type(self) -> str:
        return self._response.content_type

    async def read(self) -> bytes:
        return await self._response.read()

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._response.iter_any()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._response.__aexit__(*exc)
        finally:
            self._slots.release()


class _Own:
    """The ``h1`` route of one base URL: the slots of its host (None: no bound)."""

    __slots__ = ("slots",)

    def __init__(self, slots: asyncio.Semaphore | None) -> None:
        self.slots = slots


class ExternalTransport:
    """``transport.Transport`` for external connections (see the module's docstring)."""

    def __init__(self, *, per_host: int = 64, connect_timeout: float = 10.0, own_client: bool = True) -> None:
        self._library = AiohttpTransport(per_host=per_host, connect_timeout=connect_timeout)
        self._h1 = H1Client(connect_timeout=connect_timeout)
        self._per_host = per_host
        self._own_client = own_client
        self._routes: dict[str, _Own | None] = {}  # base URL → its h1 route, or _LIBRARY
        self._hosts: dict[str, asyncio.Semaphore] = {}  # host:port → its connection slots
        self._waiting = 0

    async def _route(self, base_url: str) -> _Own | None:
        route: _Own | None = _LIBRARY
        parts = urlsplit(base_url)
        if self._own_client and parts.scheme == "http" and parts.hostname:
            env = await asyncio.to_thread(env_route, base_url)  # reads files: once per base URL
            if env.proxy is None and env.netrc_auth is None:
                route = _Own(self._slots(f"{parts.hostname}:{parts.port or 80}"))
        if len(self._routes) > 4096:
            self._routes.clear()
        self._routes[base_url] = route
        return route

    def _slots(self, host: str) -> asyncio.Semaphore | None:
        if self._per_host <= 0:
            return None
        slots = self._hosts.get(host)
        if slots is None:
            slots = self._hosts[host] = asyncio.Semaphore(self._per_host)
        return slots

    async def post(
        self, base_url: str, path: str, body: bytes, headers: Iterable[tuple[str, str]], *, timeout: float
    ) -> BackendResponse:
        try:
            route = self._routes[base_url]
        except KeyError:
            route = await self._route(base_url)
        if route is _LIBRARY:
            return await self._library.post(base_url, path, body, headers, timeout=timeout)
        slots = route.slots
        if slots is None:
            return await self._h1.post(base_url, path, body, headers, timeout=timeout)
        if slots.locked():  # a burst past the bound: wait for a slot, within the request's time
            loop = asyncio.get_running_loop()
            started = loop.time()
            self._waiting += 1
            try:
                async with asyncio.timeout(timeout):
                    await slots.acquire()
            except TimeoutError:
                raise TimeoutError(f"no connection to the backend was free within {timeout:g}s") from None
            finally:
                self._waiting -= 1
            timeout = max(0.001, timeout - (loop.time() - started))
        else:
            await slots.acquire()  # free: returns at once
        try:
            response = await self._h1.post(base_url, path, body, headers, timeout=timeout)
        except BaseException:
            slots.release()
            raise
        return _Slotted(response, slots)

    @property
    def waiting(self) -> int:
        """Requests waiting for a connection slot on ``h1`` (a burst past the bound, queued here)."""
        return self._waiting

    def own_client(self, base_url: str) -> bool | None:
        """Whether ``base_url`` goes through ``h1`` (None: not decided yet, before its first request)."""
        if base_url not in self._routes:
            return None
        return self._routes[base_url] is not _LIBRARY

    async def close(self) -> None:
        await self._h1.close()
        await self._library.close()
