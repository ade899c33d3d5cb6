"""Relay a request to a backend that speaks the client's protocol: rewrite ``model``, stream bytes through.

The upstream call runs on one pooled aiohttp session. A client that disconnects cancels the handler
(``handler_cancellation``), which closes the upstream connection, which makes the backend stop generating.
A backend that dies mid-stream gives the client one SSE ``error`` event, then the stream closes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from superollama.control import RouteTarget
from superollama.errors import UpstreamError
from superollama.wire.openai import error_body

__all__ = ["Relay"]

log = logging.getLogger("superollama.gateway.relay")

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_UPSTREAM_DOWN = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


class Relay:
    def __init__(self, session: aiohttp.ClientSession, timeout: float) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=10)

    async def forward(
        self, request: web.Request, target: RouteTarget, path: str, body: dict[str, Any], stream: bool
    ) -> web.StreamResponse:
        url = target.endpoint.base_url + path
        payload = orjson.dumps(body)
        try:
            headers = {"Content-Type": "application/json", **dict(target.endpoint.headers)}
            upstream_cm = self._session.post(url, data=payload, headers=headers, timeout=self._timeout)
            async with upstream_cm as upstream:
                if upstream.status >= 400:
                    return await _upstream_error(upstream)
                if stream and upstream.content_type == "text/event-stream":
                    return await _relay_stream(request, upstream, target)
                data = await upstream.read()
                return web.Response(body=data, status=upstream.status, content_type="application/json")
        except _UPSTREAM_DOWN as exc:
            raise UpstreamError(
                f"backend of {target.endpoint.served_name!r} failed: {_describe(exc)}", retry_after=1
            ) from exc


async def _relay_stream(
    request: web.Request, upstream: aiohttp.ClientResponse, target: RouteTarget
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, headers=_SSE_HEADERS)
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except _UPSTREAM_DOWN as exc:
        err = UpstreamError(f"backend of {target.endpoint.served_name!r} failed mid-stream: {_describe(exc)}")
        log.warning("%s", err.message)
        await response.write(b"event: error\ndata: " + orjson.dumps(error_body(err)) + b"\n\n")
    await response.write_eof()
    return response


async def _upstream_error(upstream: aiohttp.ClientResponse) -> web.Response:
    """Pass the backend's 4xx/5xx through in OpenAI's envelope (llama.cpp sends ``code`` as an int)."""
    raw = await upstream.read()
    message = raw.decode("utf-8", "replace")[:2000] or upstream.reason or "backend error"
    err_type = "invalid_request_error" if upstream.status < 500 else "upstream_error"
    try:
        parsed = orjson.loads(raw)
        inner = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        if isinstance(inner, dict):
            message = str(inner.get("message", message))
            err_type = str(inner.get("type", err_type))
        elif isinstance(inner, str):
            message = inner
    except orjson.JSONDecodeError:
        pass
    status = upstream.status if upstream.status < 500 else 502
    body = {"error": {"message": message, "type": err_type, "param": None, "code": None}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
