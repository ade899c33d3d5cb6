"""What every HTTP provider shares: JSON calls with the endpoint's headers, errors mapped once.

A backend that cannot be reached (refused, reset, timed out) is an ``UpstreamError`` (503). A backend that
answers an error keeps its meaning: 404 is ``NotFound``, another 4xx an ``InvalidRequest`` with the same
status, a 5xx an ``UpstreamError`` with status 502 — each with the backend's own message (Ollama's
``{"error": "..."}``, OpenAI's ``{"error": {"message": ...}}``, TGI's ``{"error": ..., "error_type": ...}``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from superollama.core import Endpoint
from superollama.errors import InvalidRequest, NotFound, SuperOllamaError, UpstreamError

__all__ = [
    "LONG_TIMEOUT",
    "call",
    "check",
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


async def get_json(session: aiohttp.ClientSession, ep: Endpoint, path: str) -> Any:
    return await request_json(session, ep, "GET", path)


async def check(session: aiohttp.ClientSession, ep: Endpoint, path: str) -> None:
    """GET ``path`` and require a 2xx answer, whatever its body (a health route)."""
    async with call(session, ep, "GET", path) as response:
        try:
            await response.read()
        except _DOWN as exc:
            raise UpstreamError(f"GET {ep.base_url + path}: {_reason(exc)}") from exc


async def request_json(
    session: aiohttp.ClientSession,
    ep: Endpoint,
    method: str,
    path: str,
    body: Any = None,
    *,
    timeout: aiohttp.ClientTimeout = _TIMEOUT,
    plain: bool = False,
) -> Any:
    """One call; the JSON it answers (None for an empty body)."""
    url = ep.base_url + path
    async with call(session, ep, method, path, body, timeout=timeout, plain=plain) as response:
        try:
            raw = await response.read()
        except _DOWN as exc:
            raise UpstreamError(f"{method} {url}: {_reason(exc)}") from exc
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"{method} {url}: the answer is not JSON") from None


async def stream_ndjson(
    session: aiohttp.ClientSession,
    ep: Endpoint,
    path: str,
    body: Any,
    *,
    timeout: aiohttp.ClientTimeout = LONG_TIMEOUT,
    plain: bool = True,
) -> AsyncIterator[dict[str, Any]]:
    """POST ``body``; yield each object of the NDJSON answer (blank lines skipped). An object that carries
    ``error`` ends the stream with that error (Ollama reports a failure mid-stream that way)."""
    url = ep.base_url + path
    async with call(session, ep, "POST", path, body, timeout=timeout, plain=plain) as response:
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise UpstreamError(f"POST {url}: invalid NDJSON line {line[:200]!r}") from None
                if not isinstance(obj, dict):
                    continue
                if obj.get("error"):
                    raise mapped_error(500, _message(obj, "error"), in_stream=True)
                yield obj
        except _DOWN as exc:
            raise UpstreamError(f"POST {url} failed mid-stream: {_reason(exc)}") from exc


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
) -> AsyncIterator[aiohttp.ClientResponse]:
    """``async with call(...) as response``: a 2xx response, or the backend's error as ours. ``plain``:
    the error's message is the backend's own (a user's request); else it names the call (a health check)."""
    url = ep.base_url + path
    headers = dict(ep.headers)
    data = None
    if body is not None:
        data = orjson.dumps(body)
        headers["Content-Type"] = "application/json"
    try:
        response = await session.request(method, url, data=data, headers=headers, timeout=timeout)
    except _DOWN as exc:
        raise UpstreamError(f"{method} {url}: {_reason(exc)}") from exc
    try:
        if response.status >= 400:
            try:
                raw = await response.read()
            except _DOWN:
                raw = b""
            message = _message_of(raw, response.reason or "error")
            if not plain:
                message = f"{method} {url}: HTTP {response.status} {message}"
            raise mapped_error(response.status, message)
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
    return "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
