"""Calls to a backend for a *translated* request (a protocol the backend does not speak, e.g. Ollama's):
one JSON answer, or its SSE stream as parsed objects. Same-protocol requests go through ``Relay`` instead.

Backend errors become ours, with the backend's message: a 4xx keeps its status (404 is ``NotFound``, so
a caller can fall back when a backend lacks an optional route), a 5xx is a 502. A backend that goes
away, before or during the stream, is an ``UpstreamError``; so is a stream that ends without ``[DONE]``.
A request its instance never answered (or answered 502/503) goes to another instance or a replacement
(``Lease``), within the retry budget; every outcome is told to the instance's breaker.
The stream is read inside the caller's ``async with``: a client that disconnects cancels the handler,
which leaves the block, which closes the upstream connection, which makes the backend stop generating.

A target's credential (``Endpoint.credential``: the routing snapshot names it, never carries it) is
resolved at send time from this process's ``CredentialSource``. Failure messages reach clients: they say
what failed, never the backend's address.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from superollama.core import CredentialSource
from superollama.errors import InvalidRequest, NotFound, SuperOllamaError, UpstreamError, UpstreamTimeout
from superollama.gateway.lease import Lease
from superollama.gateway.transport import (
    BackendResponse,
    ConnectFailed,
    Mounts,
    NoAnswer,
    Transport,
    UpstreamConnectionError,
    describe_failure,
)
from superollama.wire.ollama import error_message

__all__ = ["UPSTREAM_DOWN", "Upstream", "describe_failure", "post_to_backend"]

UPSTREAM_DOWN = (UpstreamConnectionError, TimeoutError)


class Upstream:
    def __init__(
        self,
        client: Mounts | Transport,
        timeout: float,
        credentials: CredentialSource | None = None,
        *,
        first_token_timeout: float | None = None,
    ) -> None:
        """``first_token_timeout``: how long a stream may wait for its first event (504 past it)."""
        self._client = client if isinstance(client, Mounts) else Mounts(client)
        self._timeout = timeout
        self._credentials = credentials
        self._first_token = first_token_timeout

    async def post(self, target: Lease, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` and return the JSON object the backend answers."""
        async with self.open(target, path, body) as upstream:
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
        """POST ``body``; yield an iterator over the answer's SSE ``data:`` objects (its first one already
        arrived when a first-token timeout is set)."""
        deadline = None
        if self._first_token is not None:
            deadline = asyncio.get_running_loop().time() + self._first_token
        async with self.open(target, path, body, deadline) as upstream:
            events = _sse(upstream, target.endpoint.served_name)
            if deadline is not None:
                events = await self._first_in_time(events, deadline, target)
            yield events

    async def _first_in_time(
        self, events: AsyncIterator[dict[str, Any]], deadline: float, target: Lease
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async with asyncio.timeout_at(deadline):
                first = await anext(events, None)
        except TimeoutError:
            target.failed()
            raise self._no_first_token(target) from None

        async def chained() -> AsyncIterator[dict[str, Any]]:
            if first is not None:
                yield first
            async for event in events:
                yield event

        return chained()

    def _no_first_token(self, target: Lease) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"backend of {target.endpoint.served_name!r} sent no first token within {self._first_token:g}s",
            retry_after=1,
        )

    @contextlib.asynccontextmanager
    async def open(
        self,
        target: Lease,
        path: str,
        body: dict[str, Any],
        deadline: float | None = None,
        *,
        errors: bool = True,
    ) -> AsyncIterator[BackendResponse]:
        """POST ``body``; yield the backend's answer, unread. An error status raises as ours (404
        ``NotFound``, other 4xx ``InvalidRequest`` with its status, 5xx ``UpstreamError``) unless
        ``errors=False``, for a caller that reads the backend's own errors (a 404 or 501 that means "not
        here" rather than "failed"); ``deadline`` (loop time) bounds the wait for the answer's headers."""
        name = target.endpoint.served_name
        first_token = asyncio.timeout_at(deadline)
        try:
            async with first_token:
                sending = await post_to_backend(
                    self._client,
                    target,
                    path,
                    orjson.dumps(body),
                    self._timeout,
                    credentials=self._credentials,
                )
            async with sending as upstream:
                if errors and upstream.status >= 400:
                    raise _error(upstream.status, await upstream.read(), upstream.reason or "backend error")
                yield upstream
        except TimeoutError as exc:
            if first_token.expired():
                target.failed()
                raise self._no_first_token(target) from exc
            raise UpstreamTimeout(
                f"backend of {name!r} failed: {describe_failure(exc)}", retry_after=1
            ) from exc
        except UPSTREAM_DOWN as exc:
            raise UpstreamError(
                f"backend of {name!r} failed: {describe_failure(exc)}", retry_after=1
            ) from exc


_JSON = (("Content-Type", "application/json"),)
_REFUSED = (502, 503)  # the backend did not take the request: another instance may
_NOT_IMPLEMENTED = 501


async def post_to_backend(
    client: Mounts | Transport,
    target: Lease,
    path: str,
    data: bytes,
    timeout: float,
    *,
    credentials: CredentialSource | None = None,
) -> BackendResponse:
    """POST JSON to a backend, with the endpoint's credential attached here and now. The client sends it
    once more when a pooled connection turns out dead before any answer (llama.cpp's server drops idle
    keep-alive connections while it streams); a backend that cannot be reached, or closed the connection
    before answering, is replaced when that is safe (see ``Lease.replace``) and the request goes to the
    replacement; a 502/503 goes to another ready instance when the route has one (``Lease.elsewhere``).
    The answer's status is the instance's verdict for its breaker (5xx but 501: a failure; a 501 is a
    healthy server saying it lacks a feature, as llama.cpp's does for reranking or embeddings)."""
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
        transport = (
            client.select(ep.base_url, external=target.external) if isinstance(client, Mounts) else client
        )
        try:
            response = await transport.post(ep.base_url, send_path, data, headers, timeout=timeout)
        except (ConnectFailed, NoAnswer) as exc:
            target.failed()
            if not await target.replace(reached=isinstance(exc, NoAnswer)):
                raise
            continue
        except UPSTREAM_DOWN:
            target.failed()
            raise
        if response.status < 500 or response.status == _NOT_IMPLEMENTED:
            target.succeeded()  # it answered: a 501 says what it lacks (e.g. reranking), not that it failed
            return response
        target.failed()
        other = target.elsewhere() if response.status in _REFUSED else None
        if other is None:
            return response
        await response.__aexit__(None, None, None)  # closes the connection: its body is not read
        target.move(other)


async def _sse(upstream: BackendResponse, name: str) -> AsyncIterator[dict[str, Any]]:
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
