"""The seam between the relay and the backends: one narrow ``Transport``, mounted per endpoint.

Like httpx's transports (``handle_request(request) -> Response``), everything that sends a request to a
backend goes through one method, ``post(base_url, path, body, headers, timeout=...)``, which answers once
the status line and headers arrived with a ``BackendResponse`` whose body is read whole (``read``) or as
it arrives (``iter_any``), inside ``async with`` (leaving the block pools or closes the connection).

Which transport serves an endpoint is decided once per request by ``Mounts`` (httpx's ``mounts=``):
a URL prefix mounted explicitly wins (longest first); otherwise a connection's endpoint (an external
server: a paid API, a proxy, TLS, maybe HTTP/2) gets the ``external`` transport, and an instance we run
(loopback or cluster) gets the ``instances`` one. Tests mount a mock transport instead of servers.

The decision, measured with ``bench/transport.py`` (each client alone, one uvloop event loop, against a
keep-alive loopback upstream in another process answering a 604-byte chat completion; 2 shared cores,
load average ~10, so read the ratios, not the absolute numbers)::

    client    c=1 req/s  p50      p99      c=16 req/s  p50      p99
    h1         9.3-11.6k 0.03 ms  2.7-3.1   8.3-9.7k   0.5 ms   10-11 ms
    aiohttp    410-640   0.5-0.7  11-15     1.2-1.9k   6-9 ms   31-45 ms
    httpx      195-220   1.9 ms   22-24     140-150    69 ms    480-560 ms

So: our own ``h1.H1Client`` for the instances we run (the hot path: 5-15x aiohttp's rate on one core);
aiohttp's client (``transport_aiohttp.AiohttpTransport``) for external connections, where a request
costs seconds at a paid API anyway and what matters is ``HTTPS_PROXY`` / ``NO_PROXY`` (``trust_env``),
a bound on connections per host (``SUPEROLLAMA_EXTERNAL_POOL_LIMIT``), maintained TLS and gzip; an
external connection over plain HTTP that none of these touch (no proxy, no ``~/.netrc`` entry: a vLLM
or an Ollama on the same network) goes through ``h1`` too, under the same bound per host
(``transport_external``). httpx
is the only one with HTTP/2, but its pool is 5-60x slower than h1 here and collapses under concurrency;
no backend we speak to needs HTTP/2 yet, so it is not mounted (a ``Transport`` over it is ~60 lines,
mounted by URL prefix through ``Mounts(mounts={"https://api.example.com": ...})`` when one does).

The error contract every transport keeps (the relay decides on it whether a request may be sent again):

* ``ConnectFailed``: no connection could be made (refused, unreachable, no such host): the backend never
  saw the request — it may go to another instance;
* ``NoAnswer``: the connection closed or was reset before any byte of the answer: the backend may have
  read the request (a process that died does not go on with it);
* any other ``UpstreamConnectionError``: the answer had begun; the request was in flight;
* ``TimeoutError``: the exchange ran out of time.

Messages name the failure, never the backend's address (they reach clients): ``os_reason`` gives an OS
error's own words without the address asyncio adds.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Protocol, Self

__all__ = [
    "BackendResponse",
    "ConnectFailed",
    "Mounts",
    "NoAnswer",
    "Transport",
    "UpstreamConnectionError",
    "describe_failure",
    "os_reason",
]


class UpstreamConnectionError(ConnectionError):
    """The backend could not be reached, or went away before its answer was complete."""


class ConnectFailed(UpstreamConnectionError):
    """No connection to the backend: nothing of the request was sent."""


class NoAnswer(UpstreamConnectionError):
    """The connection ended before any byte of the answer (the request was sent, or partly sent)."""


class BackendResponse(Protocol):
    """A backend's answer: ``status``, ``reason``, ``headers`` (lower-case names), then its body."""

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content_type(self) -> str: ...

    async def read(self) -> bytes: ...

    def iter_any(self) -> AsyncIterator[bytes]: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


class Transport(Protocol):
    """Sends one POST to a backend; raises only the errors of the contract above (or ``TimeoutError``)."""

    async def post(
        self, base_url: str, path: str, body: bytes, headers: Iterable[tuple[str, str]], *, timeout: float
    ) -> BackendResponse: ...

    async def close(self) -> None: ...


class Mounts:
    """Which transport serves an endpoint: a mounted URL prefix (longest first), else ``external`` for a
    connection's endpoint and ``instances`` for an instance we run."""

    __slots__ = ("_prefixes", "external", "instances")

    def __init__(
        self,
        instances: Transport,
        external: Transport | None = None,
        mounts: Mapping[str, Transport] | None = None,
    ) -> None:
        self.instances = instances
        self.external = external if external is not None else instances
        self._prefixes = sorted((mounts or {}).items(), key=lambda kv: len(kv[0]), reverse=True)

    def select(self, base_url: str, *, external: bool) -> Transport:
        for prefix, transport in self._prefixes:
            if base_url.startswith(prefix):
                return transport
        return self.external if external else self.instances

    async def close(self) -> None:
        closed: set[int] = set()
        for transport in (self.instances, self.external, *(t for _, t in self._prefixes)):
            if id(transport) not in closed:
                closed.add(id(transport))
                await transport.close()


def os_reason(exc: BaseException) -> str:
    """An OS error's own words (``Connection refused``), without the address some messages carry."""
    if isinstance(exc, ssl.SSLError):
        return str(exc)  # the certificate's problem, worth saying
    if isinstance(exc, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's own strerror names the address
    return type(exc).__name__


def describe_failure(exc: BaseException) -> str:
    """A short reason for a failed backend call, for error messages: never the backend's address (the
    transports' messages are address-free by contract)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
