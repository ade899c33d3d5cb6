"""What every HTTP provider shares: JSON calls with the endpoint's headers, errors mapped once.

A backend that cannot be reached (refused, reset, timed out) is an ``UpstreamError`` (503). A backend that
answers an error keeps its meaning: 404 is ``NotFound``, another 4xx an ``InvalidRequest`` with the same
status, a 5xx an ``UpstreamError`` with status 502 — each with the backend's own message (Ollama's
``{"error": "..."}``, OpenAI's ``{"error": {"message": ...}}``, TGI's ``{"error": ..., "error_type": ...}``).

An endpoint's credential (``Endpoint.credential``) is resolved here, at send time, from the provider's
``CredentialSource``: its headers are added and its query pieces appended to the path. No message names
the backend's URL or address (it may carry secrets, and users see these messages): a message names the
method and path of the call and the kind of failure; ``failure_kind`` gives that kind alone.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from superollama.core import CredentialSource, Endpoint
from superollama.errors import InvalidRequest, NotFound, SuperOllamaError, UpstreamError

__all__ = [
    "LONG_TIMEOUT",
    "BackendAnswered",
    "BackendSaid",
    "call",
    "check",
    "failure_kind",
    "get_json",
    "mapped_error",
    "request_json",
    "stream_ndjson",
    "strip_suffix",
]

_TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=5)
# Model management on a backend (a pull of many GB): no overall limit; 10 minutes of silence is an error.
LONG_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
_DOWN = (TimeoutError, aiohttp.ClientError)


class BackendAnswered(Exception):
    """The cause of an error the backend answered: the call (``GET /health``, one of the provider's own
    paths) and its HTTP status (for ``failure_kind``)."""

    def __init__(self, call: str, status: int) -> None:
        super().__init__(f"{call} answered HTTP {status}")
        self.call = call
        self.status = status


class BackendSaid(Exception):
    """The cause of an error whose text comes from the backend mid-stream (for ``failure_kind``)."""

    def __init__(self, call: str) -> None:
        super().__init__(f"{call} failed on the server")
        self.call = call


def failure_kind(exc: SuperOllamaError) -> str:
    """``exc`` (raised by a provider) in words safe to show anyone: the call and the kind of failure,
    never an address, a URL or text the backend wrote. The messages this module and the providers make
    themselves are such words already; a backend's own answer is replaced by its call and status."""
    cause = exc.__cause__
    if isinstance(cause, BackendAnswered):
        return f"{cause.call} answered HTTP {cause.status}"
    if isinstance(cause, BackendSaid):
        return str(cause)
    return exc.message


async def get_json(
    session: aiohttp.ClientSession,
    ep: Endpoint,
    path: str,
    *,
    credentials: CredentialSource | None = None,
) -> Any:
    return await request_json(session, ep, "GET", path, credentials=credentials)


async def check(
    session: aiohttp.ClientSession,
    ep: Endpoint,
    path: str,
    *,
    credentials: CredentialSource | None = None,
) -> None:
    """GET ``path`` and require a 2xx answer, whatever its body (a health route)."""
    async with call(session, ep, "GET", path, credentials=credentials) as response:
        try:
            await response.read()
        except _DOWN as exc:
            raise UpstreamError(f"GET {path}: {_reason(exc)}") from exc


async def request_json(
    session: aiohttp.ClientSession,
    ep: Endpoint,
    method: str,
    path: str,
    body: Any = None,
    *,
    timeout: aiohttp.ClientTimeout = _TIMEOUT,
    plain: bool = False,
    credentials: CredentialSource | None = None,
) -> Any:
    """One call; the JSON it answers (None for an empty body)."""
    async with call(
        session, ep, method, path, body, timeout=timeout, plain=plain, credentials=credentials
    ) as response:
        try:
            raw = await response.read()
        except _DOWN as exc:
            raise UpstreamError(f"{method} {path}: {_reason(exc)}") from exc
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"{method} {path}: the answer is not JSON") from None


async def stream_ndjson(
    session: aiohttp.ClientSession,
    ep: Endpoint,
    path: str,
    body: Any,
    *,
    timeout: aiohttp.ClientTimeout = LONG_TIMEOUT,
    plain: bool = True,
    credentials: CredentialSource | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """POST ``body``; yield each object of the NDJSON answer (blank lines skipped). An object that carries
    ``error`` ends the stream with that error (Ollama reports a failure mid-stream that way)."""
    async with call(
        session, ep, "POST", path, body, timeout=timeout, plain=plain, credentials=credentials
    ) as response:
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise UpstreamError(f"POST {path}: invalid NDJSON line {line[:200]!r}") from BackendSaid(
                        f"POST {path}"
                    )
                if not isinstance(obj, dict):
                    continue
                if obj.get("error"):
                    raise mapped_error(500, _message(obj, "error"), in_stream=True) from BackendSaid(
                        f"POST {path}"
                    )
                yield obj
        except _DOWN as exc:
            raise UpstreamError(f"POST {path} failed mid-stream: {_reason(exc)}") from exc


@contextlib.asynccontextmanager
async def call(
    session: aiohttp.ClientSession,
    ep: Endpoint,
    method: str,
    path: str,
    body: Any = None,
    *,
    timeout: aiohttp.ClientTimeout = _TIMEOUT,
    plain: bool = False,
    credentials: CredentialSource | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """``async with call(...) as response``: a 2xx response, or the backend's error as ours. ``plain``:
    the error's message is the backend's own (a user's request); else it names the call (a health check)."""
    headers = dict(ep.headers)
    target = path
    if ep.credential is not None:
        credential = credentials.credential(ep.credential) if credentials is not None else None
        if credential is None:
            raise UpstreamError(f"{method} {path}: its credential is not loaded in this process")
        headers.update(credential.headers)
        target = credential.path(path)
    data = None
    if body is not None:
        data = orjson.dumps(body)
        headers["Content-Type"] = "application/json"
    try:
        response = await session.request(
            method, ep.base_url + target, data=data, headers=headers, timeout=timeout
        )
    except _DOWN as exc:
        raise UpstreamError(f"{method} {path}: {_reason(exc)}") from exc
    try:
        if response.status >= 400:
            try:
                raw = await response.read()
            except _DOWN:
                raw = b""
            message = _message_of(raw, response.reason or "error")
            if not plain:
                message = f"{method} {path}: HTTP {response.status} {message}"
            raise mapped_error(response.status, message) from BackendAnswered(
                f"{method} {path}", response.status
            )
        yield response
    finally:
        response.release()


def mapped_error(status: int, message: str, *, in_stream: bool = False) -> SuperOllamaError:
    """Our error for a backend's error answer (see the module's docstring)."""
    err: SuperOllamaError
    if status == 404 or (in_stream and _looks_missing(message)):
        err = NotFound(message)
    elif status < 500:
        err = InvalidRequest(message)
        err.status = status
    else:
        err = UpstreamError(message)
        err.status = 502
    return err


def strip_suffix(url: str, *suffixes: str) -> str:
    url = url.rstrip("/")
    for suffix in suffixes:
        if url.endswith(suffix):
            return url[: -len(suffix)].rstrip("/")
    return url


def _looks_missing(message: str) -> bool:
    lowered = message.lower()
    return "not found" in lowered or "does not exist" in lowered


def _message_of(raw: bytes, fallback: str) -> str:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace").strip()[:300] or fallback
    return _message(obj, fallback)


def _message(obj: Any, fallback: str) -> str:
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("message"))
        if isinstance(err, dict):
            err = err.get("message")
        if isinstance(err, str) and err:
            return err
    return str(obj)[:300] if obj else fallback


def _reason(exc: BaseException) -> str:
    """The failure in words that name no address (aiohttp's own messages do)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, socket.gaierror):
            return "cannot connect (the host name does not resolve)"
        errno = exc.os_error.errno
        return f"cannot connect ({os.strerror(errno)})" if errno else "cannot connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    return f"the connection failed ({type(exc).__name__})"
