"""The transport for external connections, on aiohttp's maintained client (see ``transport`` for why).

What it adds over ``h1``, and why a connection to somebody else's server needs it: ``HTTPS_PROXY`` /
``HTTP_PROXY`` / ``NO_PROXY`` from the environment (``trust_env``), a bound on connections per host (a
paid API limits them, and a burst must queue here rather than be refused there), TLS through a client
that is kept up to date, and decompression of what a CDN gzips. aiohttp's errors become the seam's
(``ConnectFailed``, ``NoAnswer``, ``UpstreamConnectionError``, ``TimeoutError``), in words that name no
address.

The environment (proxy variables, ``~/.netrc``) is read once per backend URL, on its first request, not
per request: aiohttp's own ``trust_env`` looks both up for every request in a worker thread (two thread
hand-offs per request, the largest single cost of this transport under load). A change to the proxy
variables therefore takes effect at the next start, as for every other setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterable
from typing import NamedTuple, Self

import aiohttp
from aiohttp.helpers import basicauth_from_netrc, get_env_proxy_for_url, netrc_from_env
from yarl import URL

from superollama.gateway.transport import ConnectFailed, NoAnswer, UpstreamConnectionError, os_reason

__all__ = ["AiohttpResponse", "AiohttpTransport", "EnvRoute", "env_route"]


class AiohttpResponse:
    """``transport.BackendResponse`` over an ``aiohttp.ClientResponse``."""

    __slots__ = ("_headers", "_response", "reason", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.reason = response.reason or ""
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; built on first use (the relay reads only the content type)."""
        if self._headers is None:
            self._headers = {name.lower(): value for name, value in self._response.headers.items()}
        return self._headers

    @property
    def content_type(self) -> str:
        raw = self._response.headers.get("Content-Type", "")  # case-insensitive: no dict to build
        return raw.split(";", 1)[0].strip().lower()

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except TimeoutError:
            raise
        except aiohttp.ClientError as exc:
            raise _mid_answer(exc) from exc

    async def iter_any(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._response.content.iter_any():
                yield data
        except TimeoutError:
            raise
        except aiohttp.ClientError as exc:
            raise _mid_answer(exc) from exc

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._response.content.at_eof():
            self._response.release()  # read to the end: the connection goes back to the pool
        else:
            self._response.close()  # a body left unread: close, so the server stops sending it


class EnvRoute(NamedTuple):
    """What the environment says for one backend URL: its proxy (and the proxy's credentials), and the
    ``~/.netrc`` credentials of its host (sent only when the request carries no ``Authorization``)."""

    proxy: URL | None
    proxy_auth: aiohttp.BasicAuth | None
    netrc_auth: str | None  # the ``Authorization`` value


def env_route(base_url: str) -> EnvRoute:
    """The lookups ``trust_env=True`` makes per request, made once (blocking: a file may be read)."""
    url = URL(base_url)
    proxy, proxy_auth, netrc_auth = None, None, None
    with contextlib.suppress(LookupError):
        proxy, proxy_auth = get_env_proxy_for_url(url)
    if url.host is not None:
        with contextlib.suppress(LookupError):
            netrc_auth = basicauth_from_netrc(netrc_from_env(), url.host).encode()
    return EnvRoute(proxy, proxy_auth, netrc_auth)


class AiohttpTransport:
    """``transport.Transport`` on one ``aiohttp.ClientSession`` (its own, or one given)."""

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        per_host: int = 64,
        connect_timeout: float = 10.0,
    ) -> None:
        self._session = session
        self._owned = session is None
        self._per_host = per_host
        self._connect_timeout = connect_timeout
        self._env: dict[str, EnvRoute] = {}  # base URL → what the environment says for it
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use: it must be made inside the running loop
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._per_host, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)  # see env_route
        return self._session

    async def _route(self, base_url: str) -> EnvRoute:
        env = self._env.get(base_url)
        if env is None:
            env = self._env[base_url] = await asyncio.to_thread(env_route, base_url)
        return env

    async def post(
        self, base_url: str, path: str, body: bytes, headers: Iterable[tuple[str, str]], *, timeout: float
    ) -> AiohttpResponse:
        limits = self._timeouts.get(timeout)
        if limits is None:  # one per distinct timeout (the settings'), not one per request
            limits = self._timeouts[timeout] = aiohttp.ClientTimeout(
                total=timeout, sock_connect=min(timeout, self._connect_timeout)
            )
        env = self._env.get(base_url) or await self._route(base_url)
        sent = headers
        if env.netrc_auth is not None:
            sent = list(headers)
            if not any(name.lower() == "authorization" for name, _ in sent):
                sent.append(("Authorization", env.netrc_auth))
        try:
            response = await self._get_session().post(
                base_url + path,
                data=body,
                headers=sent,
                timeout=limits,
                proxy=env.proxy,
                proxy_auth=env.proxy_auth,
            )
        except TimeoutError:
            raise TimeoutError(f"the backend did not answer within {timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(f"cannot connect to the backend ({_connect_reason(exc)})") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise NoAnswer("the backend closed the connection before answering") from exc
        except aiohttp.ClientOSError as exc:
            raise NoAnswer(f"the backend closed the connection before answering ({os_reason(exc)})") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"the connection failed ({type(exc).__name__})") from exc
        return AiohttpResponse(response)

    async def close(self) -> None:
        if self._session is not None and self._owned:
            await self._session.close()


def _connect_reason(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return "the proxy refused the connection"
    if isinstance(exc.os_error, socket.gaierror):
        return "the host name does not resolve"
    return os_reason(exc.os_error)


def _mid_answer(exc: aiohttp.ClientError) -> UpstreamConnectionError:
    return UpstreamConnectionError(f"the backend closed the connection mid-answer ({type(exc).__name__})")
