"""An Ollama client's request to an Ollama connection, relayed to that server's own ``/api/*`` untranslated.

Going through the OpenAI API and back would lose what only Ollama's API carries (``options`` beyond the
OpenAI set, ``keep_alive`` for the server's own model, ``think``, ``format`` as a schema, ``context``,
``raw``, ``template``, images as they came) and cost two translations. The body goes as the client sent
it, with ``model`` made the server's name; the answer comes back as the server sent it, with ``model``
made ours (``box/llama3.2:1b``). Governance is the same as for any request: the caller admitted it and
holds the lease; usage is metered from the counts Ollama puts in its last object (``prompt_eval_count``,
``eval_count``), estimated when a server leaves them out.

A stream's lines are parsed one by one because ``model`` must be rewritten in each; each is small, and
every line is written as soon as it is complete. An error the server sends mid-stream (``{"error": …}``)
reaches the client as Ollama's own clients expect it: as a line.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from superollama.errors import UpstreamError
from superollama.gateway.exchange import Exchange, exchange_of
from superollama.gateway.lease import Lease
from superollama.gateway.responses import json_response
from superollama.gateway.upstream import UPSTREAM_DOWN, Upstream, describe_failure
from superollama.gateway.usage_estimate import estimate_text

__all__ = ["NATIVE_OLLAMA", "OllamaNative"]

log = logging.getLogger("superollama.gateway.ollama_native")

NATIVE_OLLAMA = "ollama"
_NDJSON = {"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class OllamaNative:
    def __init__(self, upstream: Upstream) -> None:
        self._up = upstream

    async def relay(
        self,
        request: web.Request,
        target: Lease,
        path: str,
        body: dict[str, Any],
        model: str,
        *,
        stream: bool,
    ) -> web.StreamResponse:
        """Send ``body`` to the server's ``path`` for ``model`` (the name the client used)."""
        payload = {**body, "model": target.endpoint.served_name}
        payload.pop("name", None)  # the legacy spelling of "model"; ours is resolved already
        ex = exchange_of(request)
        async with self._up.open(target, path, payload) as upstream:
            if not stream or "ndjson" not in upstream.content_type:
                answer = _object(await upstream.read(), target)
                if ex is not None:
                    ex.mark_first_byte()
                    _meter(ex, payload, answer, _text_of(answer))
                return json_response(_ours(answer, model))
            response = web.StreamResponse(headers=_NDJSON)
            await response.prepare(request)
            text: list[str] = []
            last: dict[str, Any] = {}
            async for line in _lines(upstream, target):
                obj = _object(line, target)
                if ex is not None and not text and not last:
                    ex.mark_first_byte()
                text.append(_text_of(obj))
                last = obj
                await response.write(orjson.dumps(_ours(obj, model)) + b"\n")
            if ex is not None:
                _meter(ex, payload, last, "".join(text))
            await response.write_eof()
            return response


async def _lines(upstream: Any, target: Lease) -> AsyncIterator[bytes]:
    buffer = b""
    try:
        async for chunk in upstream.iter_any():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    yield line
    except UPSTREAM_DOWN as exc:
        name = target.endpoint.served_name
        raise UpstreamError(f"backend of {name!r} failed mid-stream: {describe_failure(exc)}") from exc
    if buffer.strip():
        yield buffer


def _object(raw: bytes, target: Lease) -> dict[str, Any]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        raise UpstreamError(f"backend of {target.endpoint.served_name!r} sent something that is not Ollama's")
    return obj


def _ours(obj: dict[str, Any], model: str) -> dict[str, Any]:
    if "model" in obj:
        obj["model"] = model
    return obj


def _text_of(obj: dict[str, Any]) -> str:
    message = obj.get("message")
    if isinstance(message, dict):
        return str(message.get("content") or "")
    return str(obj.get("response") or "")


def _meter(ex: Exchange, payload: dict[str, Any], last: dict[str, Any], text: str) -> None:
    prompt, completion = last.get("prompt_eval_count"), last.get("eval_count", 0)
    if isinstance(prompt, int) and isinstance(completion, int):
        ex.usage((prompt, completion))
    elif ex.prompt_tokens is None and ex.connection is not None:
        ex.estimated_usage(estimate_text(payload, text))  # a server that left its counts out
