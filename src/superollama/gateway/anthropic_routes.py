"""``/v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API, for every model.

The same path as ``/v1/chat/completions`` — route (a model outside the key's scope is missing) → admit
(budget, rate limit) → hold a ready instance (scale from zero) — then the request is translated to OpenAI
chat (``wire.anthropic``) for whichever backend serves the model, and the answer back, streamed as
Anthropic's named SSE events (``wire.anthropic_stream``). Usage lands on the exchange like any other
request (usage ledger per key, limits, metrics, traces), with ``protocol`` ``anthropic``.

``stop_sequences`` are found by the gateway in the streamed text; when one is, the upstream stream is
closed (the backend stops generating) and the usage it could no longer report is counted with the
backend's tokenizer where it has one, else estimated (the ledger marks such rows). A non-streamed
request with stop sequences is read from the backend as a stream for that reason.

Errors are rendered in Anthropic's envelope by the error middleware (paths under ``/v1/messages``); an
error after the stream began is an ``event: error``.
"""

from __future__ import annotations

import logging

from aiohttp import web

from superollama.core.routing import Route
from superollama.errors import SuperOllamaError
from superollama.gateway.exchange import exchange_of, principal_of
from superollama.gateway.lease import Lease
from superollama.gateway.openai_routes import ModelTargets, read_json
from superollama.gateway.responses import json_response
from superollama.gateway.shadow import NO_SHADOW, ShadowTap
from superollama.gateway.translated import CHAT, Backend, open_sse
from superollama.wire import anthropic as wire
from superollama.wire.anthropic_stream import StreamTranslator

__all__ = ["MISSING", "AnthropicRoutes"]

log = logging.getLogger("superollama.gateway.anthropic")

MISSING = "model: {name}"  # Anthropic's own not_found_error wording
COUNT_SOURCE_HEADER = "X-Superollama-Token-Count"  # tokenizer | backend-usage | estimate


class AnthropicRoutes:
    def __init__(self, targets: ModelTargets, backend: Backend, *, shadow: ShadowTap | None = None) -> None:
        self._targets = targets
        self._backend = backend
        self._shadow = shadow if shadow is not None else NO_SHADOW  # copies to a deployment's shadow

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        req = wire.parse(wire.MessagesRequest, await read_json(request))
        route = self._targets.route(principal_of(request), req.model, MISSING)
        payload = wire.chat_request(req, req.model)
        await self._targets.images.prepare(route, payload, model=req.model)  # URL images fetched here
        await self._targets.admit(request, route, payload, "chat")
        return await self._shadow.around(
            request, route, CHAT, payload, self._answer(request, route, payload, req)
        )

    async def _answer(
        self, request: web.Request, route: Route, payload: dict[str, object], req: wire.MessagesRequest
    ) -> web.StreamResponse:
        async with self._targets.hold(route, request) as target:
            payload["model"] = target.endpoint.served_name
            if req.stream or req.stop_sequences:
                return await self._streamed(request, target, payload, req)
            resp = await self._backend.chat(request, target, payload, images=wire.has_images(req))
            answer = wire.message(resp, req.model)
            _capture(request, answer)
            return json_response(answer)

    async def count_tokens(self, request: web.Request) -> web.Response:
        req = wire.parse(wire.CountTokensRequest, await read_json(request))
        route = self._targets.route(principal_of(request), req.model, MISSING)
        payload = wire.chat_request(req, req.model)
        await self._targets.images.prepare(route, payload, model=req.model)
        await self._targets.admit(request, route, {**payload, "max_tokens": 0}, "count_tokens")
        async with self._targets.hold(route, request) as target:
            payload["model"] = target.endpoint.served_name
            tokens, source = await self._backend.count_prompt(target, payload)
        ex = exchange_of(request)
        if ex is not None:  # a probe chat generated one token; a tokenizer count generated nothing
            ex.usage((tokens, 1) if source == "backend-usage" else (0, 0))
        response = json_response({"input_tokens": tokens})
        response.headers[COUNT_SOURCE_HEADER] = source
        return response

    async def _streamed(
        self, request: web.Request, target: Lease, payload: dict[str, object], req: wire.MessagesRequest
    ) -> web.StreamResponse:
        """Read the backend's stream; send it on as Anthropic events (``req.stream``) or as one message."""
        translator = StreamTranslator(req.model, wire.message_id(), req.stop_sequences or ())
        response: web.StreamResponse | None = None
        failed: SuperOllamaError | None = None
        async with self._backend.stream(request, target, payload, images=wire.has_images(req)) as chunks:
            if req.stream:
                response = await open_sse(request)
                await _send(response, translator.start())
            try:
                async for chunk in chunks:
                    events = translator.feed(chunk)
                    if response is not None:
                        await _send(response, events)
                    if translator.stop is not None:
                        break  # leaving the block closes the upstream: the backend stops
            except SuperOllamaError as exc:
                if response is None:
                    raise
                failed = exc
        if response is None:
            translator.end()
            await self._settle(request, target, payload, translator)
            answer = translator.message()
            _capture(request, answer)
            return json_response(answer)
        if failed is not None:  # headers are gone: the error is the last event
            log.warning("%s %s: %s", request.method, request.path, failed.message)
            ex = exchange_of(request)
            if ex is not None:
                ex.error_type, ex.error = failed.code or failed.type, failed.message
            await _send(response, [("error", wire.error_body(failed))])
        else:
            await self._settle(request, target, payload, translator)
            await _send(response, translator.end())
            _capture(request, translator.message())
        await response.write_eof()
        return response

    async def _settle(
        self, request: web.Request, target: Lease, payload: dict[str, object], translator: StreamTranslator
    ) -> None:
        """Usage of a finished stream; one cut at a stop sequence reported none, so it is counted."""
        if translator.prompt_tokens is None and translator.stop is not None:
            completion = await self._backend.count_text(target, translator.text + translator.stop)
            if completion is not None:
                translator.prompt_tokens, _ = await self._backend.count_prompt(target, payload)
                translator.completion_tokens = completion
        counts = None
        if translator.prompt_tokens is not None:
            counts = (translator.prompt_tokens, translator.completion_tokens or 0)
        self._backend.settle_stream(request, payload, translator.text, counts)
        ex = exchange_of(request)
        if counts is None and ex is not None and ex.prompt_tokens is not None:
            translator.prompt_tokens, translator.completion_tokens = ex.prompt_tokens, ex.completion_tokens


async def _send(response: web.StreamResponse, events: list[tuple[str, dict[str, object]]]) -> None:
    if events:
        await response.write(b"".join(wire.sse(name, data) for name, data in events))


def _capture(request: web.Request, answer: dict[str, object]) -> None:
    ex = exchange_of(request)
    if ex is not None and ex.capture:
        ex.output = answer.get("content")
