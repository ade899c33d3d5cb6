"""Relay a request to a backend that speaks the client's protocol: rewrite ``model``, stream bytes through.

The upstream call goes through the transport mounted for the endpoint (``transport.Mounts``: our own
``h1`` client for instances we run). A client that disconnects cancels the handler
(``handler_cancellation``), which closes the upstream connection, which makes the backend stop generating.
A backend that dies mid-stream gives the client one SSE ``error`` event, then the stream closes.

Timeouts: ``timeout`` bounds the whole exchange; ``first_token_timeout`` bounds a stream's wait for its
first event (from the send), and ends it with a 504 before the client has seen a byte. With
``fallback=True`` (the caller has another route to try), an answer that a fallback may do better with —
a 5xx, or a context-length error — is not sent but raised as ``Declined`` with the response it would
have been; failures before the first byte are raised (``UpstreamError``) either way.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from superollama.core import CredentialSource
from superollama.errors import UpstreamError, UpstreamTimeout
from superollama.gateway.exchange import Exchange, exchange_of
from superollama.gateway.lease import Lease
from superollama.gateway.transport import BackendResponse, Mounts, Transport
from superollama.gateway.upstream import UPSTREAM_DOWN, describe_failure, post_to_backend
from superollama.gateway.usage_estimate import estimate_answer, estimate_stream
from superollama.wire.openai import USAGE_KEY, USAGE_OBJECT, error_body, find_usage

__all__ = ["INSTANCE_HEADER", "Declined", "Relay", "too_long"]

INSTANCE_HEADER = "X-Superollama-Instance"  # on an answer from an instance we run: which one

log = logging.getLogger("superollama.gateway.relay")

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = b"data: [DONE]\n\n"
_CONTEXT_EXCEEDED = re.compile(
    rb"context_length_exceeded|exceed_context_size|maximum context length|context length|too many tokens",
    re.I,
)


def too_long(message: str | bytes) -> bool:
    """Whether a backend's error says the prompt does not fit its context (a fallback may take it)."""
    raw = message.encode() if isinstance(message, str) else message
    return _CONTEXT_EXCEEDED.search(raw) is not None


class Declined(Exception):
    """The backend answered an error a fallback may do better with; ``response`` is that answer, rendered."""

    def __init__(self, response: web.Response, reason: str) -> None:
        super().__init__(reason)
        self.response = response
        self.reason = reason


class Relay:
    def __init__(
        self,
        client: Mounts | Transport,
        timeout: float,
        credentials: CredentialSource | None = None,
        *,
        first_token_timeout: float | None = None,
    ) -> None:
        """``credentials``: where a target's credential is found at send time (this process's store)."""
        self._client = client if isinstance(client, Mounts) else Mounts(client)
        self._timeout = timeout
        self._credentials = credentials
        self._first_token = first_token_timeout

    async def forward(
        self,
        request: web.Request,
        target: Lease,
        path: str,
        body: dict[str, Any],
        stream: bool,
        *,
        fallback: bool = False,
    ) -> web.StreamResponse:
        ex = exchange_of(request)
        strip_usage = False
        if stream and ex is not None and target.endpoint.stream_usage:
            # Every stream asks its backend for usage at its end (metering needs it), connections too unless
            # they opted out; a client that did not ask for it does not see that last chunk.
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage")):
                body["stream_options"] = {**(options or {}), "include_usage": True}
                strip_usage = True
        deadline = None
        if stream and self._first_token is not None:
            deadline = asyncio.get_running_loop().time() + self._first_token
        # A timeout context only where there is a deadline: entering and leaving one, even without a
        # deadline, was ~2 % of a JSON request's CPU in the profile.
        first_token: asyncio.Timeout | None = None
        try:
            sent = post_to_backend(
                self._client, target, path, orjson.dumps(body), self._timeout, credentials=self._credentials
            )
            if deadline is None:
                upstream = await sent
            else:
                first_token = asyncio.timeout_at(deadline)
                async with first_token:
                    upstream = await sent
            if ex is not None and not target.external:  # the instance that answered (of the replicas)
                ex.headers[INSTANCE_HEADER] = target.instance_id
            async with upstream:
                if upstream.status >= 400:
                    response, retriable = await _upstream_error(upstream)
                    if fallback and retriable:
                        raise Declined(response, f"HTTP {upstream.status}")
                    return response
                if stream and upstream.content_type == "text/event-stream":
                    chunks = upstream.iter_any()
                    if deadline is not None:
                        chunks = await _first_in_time(chunks, deadline)
                    kept: list[bytes] | None = [] if ex is not None and ex.connection is not None else None
                    streamed = await _relay_stream(
                        request, chunks, upstream, target=target, ex=ex, strip_usage=strip_usage, kept=kept
                    )
                    if kept is not None and ex is not None and ex.prompt_tokens is None:
                        ex.estimated_usage(estimate_stream(body, kept))  # a connection that sent none
                    return streamed
                data = await upstream.read()
                if ex is not None:
                    ex.mark_first_byte()
                    ex.usage(find_usage(data))
                    if ex.prompt_tokens is None and ex.connection is not None:
                        ex.estimated_usage(estimate_answer(body, data))
                    if ex.capture:
                        ex.output = _answer_text(data)
                return web.Response(body=data, status=upstream.status, content_type="application/json")
        except TimeoutError as exc:
            if (first_token is not None and first_token.expired()) or isinstance(exc, _NoFirstToken):
                target.failed()
                raise UpstreamTimeout(
                    f"backend of {target.endpoint.served_name!r} sent no first token within "
                    f"{self._first_token:g}s",
                    retry_after=1,
                ) from exc
            raise UpstreamTimeout(
                f"backend of {target.endpoint.served_name!r} failed: {describe_failure(exc)}", retry_after=1
            ) from exc
        except UPSTREAM_DOWN as exc:
            raise UpstreamError(
                f"backend of {target.endpoint.served_name!r} failed: {describe_failure(exc)}", retry_after=1
            ) from exc


class _NoFirstToken(TimeoutError):
    """A stream's first event did not come in time."""


async def _first_in_time(chunks: AsyncIterator[bytes], deadline: float) -> AsyncIterator[bytes]:
    """``chunks`` once its first piece arrived by ``deadline`` (``_NoFirstToken`` otherwise)."""
    try:
        async with asyncio.timeout_at(deadline):
            first = await anext(chunks, b"")
    except TimeoutError:
        raise _NoFirstToken from None

    async def chained() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk

    return chained()


async def _relay_stream(
    request: web.Request,
    chunks: AsyncIterator[bytes],
    upstream: BackendResponse,
    *,
    target: Lease,
    ex: Exchange | None,
    strip_usage: bool,
    kept: list[bytes] | None = None,
) -> web.StreamResponse:
    """Relay whole SSE events as they complete; read usage from the event that carries it. ``kept``
    collects what is relayed until usage arrives (to estimate it if none does)."""
    response = _EventStream(status=upstream.status, headers=_SSE_HEADERS)
    await response.prepare(request)
    pending = b""
    try:
        async for chunk in chunks:
            pending += chunk
            cut = pending.rfind(b"\n\n")
            if cut == -1:
                continue
            ready, pending = pending[: cut + 2], pending[cut + 2 :]
            # from the end: the usage event is a stream's last but one, so this rarely reads far
            if ex is not None and (last := ready.rfind(USAGE_KEY)) != -1:
                ready = _take_usage(ready, ex, strip_usage, last)
            if ready:
                if ex is not None:
                    ex.mark_first_byte()
                    if kept is not None and ex.prompt_tokens is None:
                        kept.append(ready)
                if ready.endswith(_DONE):
                    # The stream's last event: end the client's answer now rather than when the backend
                    # ends its body (a client that stops at [DONE] and hangs up must not turn a complete
                    # answer into a 499), in the same write as the chunked body's end. A backend body not
                    # yet ended costs its pooled connection.
                    await response.write_eof(ready)
                    return response
                await response.write(ready)
        if pending:
            await response.write(pending)
    except UPSTREAM_DOWN as exc:
        target.failed()
        err = UpstreamError(
            f"backend of {target.endpoint.served_name!r} failed mid-stream: {describe_failure(exc)}"
        )
        log.warning("%s", err.message)
        if ex is not None:
            ex.error_type, ex.error = err.code, err.message
        await response.write(b"event: error\ndata: " + orjson.dumps(error_body(err)) + b"\n\n")
    await response.write_eof()
    return response


class _EventStream(web.StreamResponse):
    """An SSE answer whose status line and headers go out with its first event, in one write: aiohttp
    sends a stream's headers on their own as it is prepared (a system call per stream, ~5 % of a short
    stream's CPU). The client sees them no later than the first event, which is all it waits for."""

    _send_headers_immediately = False


def _answer_text(data: bytes) -> Any:
    """The generated text of a JSON answer, for content capture (off unless the operator enables it)."""
    try:
        body = orjson.loads(data)
        choice = body["choices"][0]
        return choice.get("message", {}).get("content") if "message" in choice else choice.get("text")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return None


def _take_usage(events: bytes, ex: Exchange, strip: bool, last: int | None = None) -> bytes:
    """Record the usage these SSE events carry; drop the usage-only event when the client did not ask.
    Most events say ``"usage":null``: only a block with a usage *object* is looked into, and only the
    events around those objects are cut out (the block is not split event by event).

    The object is looked for backwards from the last ``"usage"`` key (``last``, when the caller found it
    already): a usage event comes at the end of a stream, so a search from the start read the whole
    block first (2.4 µs for 5 kB)."""
    at = events.rfind(USAGE_KEY) if last is None else last
    while at != -1 and USAGE_OBJECT.match(events, at) is None:
        at = events.rfind(USAGE_KEY, 0, at)
    if at == -1:
        return events
    ex.usage(find_usage(events))
    if not strip:
        return events
    found = USAGE_OBJECT.search(events)
    kept, at = [], 0
    while found is not None:
        cut = events.rfind(b"\n\n", at, found.start())
        start = at if cut == -1 else cut + 2
        end = events.find(b"\n\n", found.end())
        end = len(events) if end == -1 else end + 2
        event = events[start:end]
        if b'"choices":[]' in event or b'"choices": []' in event:  # usage alone: not the client's
            kept.append(events[at:start])
            at = end
        found = USAGE_OBJECT.search(events, end)
    if at == 0:
        return events
    kept.append(events[at:])
    return b"".join(kept)


async def _upstream_error(upstream: BackendResponse) -> tuple[web.Response, bool]:
    """Pass the backend's 4xx/5xx through in OpenAI's envelope (llama.cpp sends ``code`` as an int); and
    whether a fallback may do better (a 5xx, or a prompt longer than the backend's context)."""
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
    retriable = upstream.status >= 500 or (
        upstream.status == 400 and _CONTEXT_EXCEEDED.search(raw) is not None
    )
    response = web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
    return response, retriable
