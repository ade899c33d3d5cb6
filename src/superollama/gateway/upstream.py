"""Calls to a backend for a *translated* request (a protocol the backend does not speak, e.g. Ollama's):
one JSON answer, or its SSE stream as parsed objects. Same-protocol requests go through ``Relay`` instead.

Backend errors become ours, with the backend's message: a 4xx keeps its status (404 is ``NotFound``, so
a caller can fall back when a backend lacks an optional route), a 5xx is a 502. A backend that goes
away, before or during the stream, is an ``UpstreamError``; so is a stream that ends without ``[DONE]``.
A request its instance never answered is sent once more to the instance's replacement (``Lease``).
The stream is read inside the caller's ``async with``: a client that disconnects cancels the handler,
which leaves the block, which closes the upstream connection, which makes the backend stop generating.

A target's credential (``Endpoint.credential``: the routing snapshot names it, never carries it) is
resolved at send time from this process's ``CredentialSource``. Failure messages reach clients: they say
what failed, never the backend's address.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from superollama.core import CredentialSource
from superollama.errors import InvalidRequest, NotFound, SuperOllamaError, UpstreamError
from superollama.gateway.h1 import ConnectFailed, H1Client, H1Response, NoAnswer, UpstreamConnectionError
from superollama.gateway.lease import Lease
from superollama.wire.ollama import error_message

__all__ = ["UPSTREAM_DOWN", "Upstream", "describe_failure", "post_to_backend"]

UPSTREAM_DOWN = (UpstreamConnectionError, TimeoutError)


class Upstream:
    def __init__(self, client: H1Client, timeout: float, credentials: CredentialSource | None = None) -> None:
        self._client = client
        self._timeout = timeout
        self._credentials = credentials

    async def post(self, target: Lease, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` and return the JSON object the backend answers."""
        async with self._request(target, path, body) as upstream:
            raw = await upstream.read()
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise UpstreamError(f"backend of {target.endpoint.served_name!r} answered {path} with no object")
        return obj

    @contextlib.asynccontextmanager
    async def stream(
        self, target: Lease, path: str, body: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """POST ``body``; yield an iterator over the answer's SSE ``data:`` objects."""
        async with self._request(target, path, body) as upstream:
            yield _sse(upstream, target.endpoint.served_name)

    @contextlib.asynccontextmanager
    async def _request(self, target: Lease, path: str, body: dict[str, Any]) -> AsyncIterator[H1Response]:
        name = target.endpoint.served_name
        try:
            async with await post_to_backend(
                self._client, target, path, orjson.dumps(body), self._timeout, credentials=self._credentials
            ) as upstream:
                if upstream.status >= 400:
                    raise _error(upstream.status, await upstream.read(), upstream.reason or "backend error")
                yield upstream
        except UPSTREAM_DOWN as exc:
            raise UpstreamError(
                f"backend of {name!r} failed: {describe_failure(exc)}", retry_after=1
            ) from exc


_JSON = (("Content-Type", "application/json"),)


async def post_to_backend(
    client: H1Client,
    target: Lease,
    path: str,
    data: bytes,
    timeout: float,
    *,
    credentials: CredentialSource | None = None,
) -> H1Response:
    """POST JSON to a backend, with the endpoint's credential attached here and now. The client sends it
    once more when a pooled connection turns out dead before any answer (llama.cpp's server drops idle
    keep-alive connections while it streams); a backend that cannot be reached, or closed the connection
    before answering, is replaced when that is safe (see ``Lease.replace``) and the request goes to the
    replacement."""
    while True:
        ep = target.endpoint
        headers = _JSON + ep.headers if ep.headers else _JSON
        send_path = path
        if ep.credential is not None:
            credential = credentials.credential(ep.credential) if credentials is not None else None
            if credential is None:
                raise UpstreamError(
                    f"the credential of connection {ep.credential!r} is not loaded in this worker yet",
                    retry_after=1,
                )
            headers += credential.headers
            send_path = credential.path(path)
        try:
            return await client.post(ep.base_url, send_path, data, headers, timeout=timeout)
        except (ConnectFailed, NoAnswer) as exc:
            if not await target.replace(reached=isinstance(exc, NoAnswer)):
                raise


async def _sse(upstream: H1Response, name: str) -> AsyncIterator[dict[str, Any]]:
    buffer = b""
    try:
        async for chunk in upstream.iter_any():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                obj = _event(line.strip(), name)
                if obj is None:
                    return  # [DONE]
                if obj:
                    yield obj
    except UPSTREAM_DOWN as exc:
        raise UpstreamError(f"backend of {name!r} failed mid-stream: {describe_failure(exc)}") from exc
    raise UpstreamError(f"backend of {name!r} closed the stream before it was done")


def _event(line: bytes, name: str) -> dict[str, Any] | None:
    """One SSE line: its ``data:`` object, ``{}`` for anything else, None at ``[DONE]``."""
    if line.startswith(b"error:"):
        raise UpstreamError(f"backend of {name!r} failed mid-stream: {error_message(line[6:], 'error')}")
    if not line.startswith(b"data:"):
        return {}
    data = line[5:].strip()
    if data == b"[DONE]":
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"backend of {name!r} sent an invalid stream event") from None
    if not isinstance(obj, dict):
        return {}
    if "error" in obj:
        raise UpstreamError(f"backend of {name!r} failed mid-stream: {error_message(data, 'error')}")
    return obj


def _error(status: int, raw: bytes, reason: str) -> SuperOllamaError:
    message = error_message(raw, reason)
    err: SuperOllamaError
    if status == 404:
        err = NotFound(message)
    elif status < 500:
        err = InvalidRequest(message)
        err.status = status
    else:
        err = UpstreamError(message)
        err.status = 502
    return err


def describe_failure(exc: BaseException) -> str:
    """A short reason for a failed backend call, for error messages: never the backend's address."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    cause = exc.__cause__
    if isinstance(exc, UpstreamConnectionError) and isinstance(cause, OSError):  # could not connect
        # the errno's own words: asyncio's strerror ("Connect call failed ('10.0.0.5', 8000)") has the address
        return f"cannot connect ({os.strerror(cause.errno)})" if cause.errno else "cannot connect"
    return str(exc) or type(exc).__name__
