"""What the *translated* API edges share (Anthropic Messages, OpenAI Responses; the Ollama edge takes
``meter``): the call to the backend in OpenAI chat, with the metering the relay does for same-protocol
requests.

Each edge parses its own wire format, then goes through ``ModelTargets`` (route → admit → hold) exactly
like ``/v1/chat/completions``, and calls ``Backend``:

- ``chat``: one JSON answer; its ``usage`` is recorded on the request's exchange (usage ledger per key,
  rate-limit settlement, metrics), or estimated for a connection that reported none.
- ``stream``: the answer's chunks; the first marks time-to-first-byte; usage is recorded when the edge
  calls ``meter`` at the end (the edge knows when it stopped reading).
- ``count_prompt``: the prompt's tokens by the backend's own tokenizer where it has one (llama.cpp's
  ``/apply-template`` + ``/tokenize``: what its ``prompt_tokens`` would say), else the ``prompt_tokens``
  of a one-token chat (transformers, vLLM, connections: still the backend's own count), else our estimate
  — with which of the three it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from aiohttp import web

from superollama.core import CredentialSource
from superollama.errors import InvalidRequest, NotFound, SuperOllamaError
from superollama.gateway.exchange import exchange_of
from superollama.gateway.lease import Lease
from superollama.gateway.transport import Mounts
from superollama.gateway.upstream import Upstream
from superollama.gateway.usage_estimate import estimate_text
from superollama.security import estimate_tokens

__all__ = ["SSE_HEADERS", "Backend", "CountSource", "meter", "open_sse"]

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CHAT = "/v1/chat/completions"
CountSource = Literal["tokenizer", "backend-usage", "estimate"]


def meter(request: web.Request, response: Mapping[str, Any]) -> None:
    """Record the backend's token usage (OpenAI's ``usage``) on the request's exchange."""
    ex = exchange_of(request)
    counts = response.get("usage")
    if ex is not None and isinstance(counts, Mapping):
        prompt, completion = counts.get("prompt_tokens"), counts.get("completion_tokens", 0)
        if isinstance(prompt, int) and isinstance(completion, int):
            ex.usage((prompt, completion))


async def open_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    return response


class Backend:
    """OpenAI chat calls to a request's target, metered on its exchange."""

    def __init__(
        self,
        client: Mounts,
        timeout: float,
        credentials: CredentialSource | None = None,
        *,
        first_token_timeout: float | None = None,
    ) -> None:
        self.up = Upstream(client, timeout, credentials, first_token_timeout=first_token_timeout)

    async def chat(
        self, request: web.Request, target: Lease, payload: dict[str, Any], *, images: bool = False
    ) -> dict[str, Any]:
        async with _images_refused(images):
            resp = await self.up.post(target, CHAT, payload)
        meter(request, resp)
        ex = exchange_of(request)
        if ex is not None:
            ex.mark_first_byte()
            if ex.prompt_tokens is None and ex.connection is not None:
                choice = (resp.get("choices") or [{}])[0]
                text = (choice.get("message") or {}).get("content") or ""
                ex.estimated_usage(estimate_text(payload, str(text)))
        return resp

    @contextlib.asynccontextmanager
    async def stream(
        self, request: web.Request, target: Lease, payload: dict[str, Any], *, images: bool = False
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """The chunks of a streamed chat; leaving the block closes the upstream (the backend stops)."""
        payload = {**payload, "stream": True}
        if target.endpoint.stream_usage:
            payload["stream_options"] = {"include_usage": True}
        else:  # a connection whose server rejects stream_options
            payload.pop("stream_options", None)
        ex = exchange_of(request)
        async with _images_refused(images), self.up.stream(target, CHAT, payload) as chunks:

            async def marked() -> AsyncIterator[dict[str, Any]]:
                async for chunk in chunks:
                    if ex is not None:
                        ex.mark_first_byte()
                    yield chunk

            yield marked()

    def settle_stream(
        self, request: web.Request, payload: Mapping[str, Any], text: str, counts: tuple[int, int] | None
    ) -> None:
        """At the end of a stream: the usage it reported (or counted), else our estimate."""
        ex = exchange_of(request)
        if ex is None:
            return
        if counts is not None:
            ex.usage(counts)
        elif ex.prompt_tokens is None:
            ex.estimated_usage(estimate_text(payload, text))

    async def count_prompt(self, target: Lease, payload: dict[str, Any]) -> tuple[int, CountSource]:
        """The prompt tokens of a chat ``payload`` as the backend counts them, and how it was counted."""
        messages: dict[str, Any] = {k: payload[k] for k in ("messages", "tools") if k in payload}
        try:
            rendered = await self.up.post(target, "/apply-template", messages)
            tokens = await self.up.post(
                target, "/tokenize", {"content": str(rendered.get("prompt", "")), "parse_special": True}
            )
            return len(tokens.get("tokens") or []), "tokenizer"
        except NotFound:
            pass
        probe = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}
        probe["max_tokens"] = 1
        resp = await self.up.post(target, CHAT, probe)
        prompt = (resp.get("usage") or {}).get("prompt_tokens")
        if isinstance(prompt, int) and prompt > 0:
            return prompt, "backend-usage"
        return estimate_tokens({**payload, "max_tokens": 0}), "estimate"

    async def count_text(self, target: Lease, text: str) -> int | None:
        """Tokens of generated ``text`` by the backend's tokenizer; None when it has no ``/tokenize``."""
        try:
            tokens = await self.up.post(target, "/tokenize", {"content": text})
        except NotFound:
            return None
        return len(tokens.get("tokens") or [])


@contextlib.asynccontextmanager
async def _images_refused(images: bool) -> AsyncIterator[None]:
    """A request with images that the backend refuses is the client's to fix: a 400 that says so (a
    text-only llama.cpp model answers 500 "image input is not supported")."""
    try:
        yield
    except SuperOllamaError as exc:
        if images and "image" in exc.message.lower():
            raise InvalidRequest(f"this model cannot read images: {exc.message}", param="messages") from exc
        raise
