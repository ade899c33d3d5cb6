"""``/api/*``: the Ollama API on the data plane, for every model, translated to the OpenAI API backends speak.

Inference (chat, generate, embed, embeddings) shares the OpenAI edge's path — route → pick (or start) an
instance → count it in flight; for chat, the route's fallbacks when it fails — and translates with the pure
converters of ``wire.ollama``; answers stream as NDJSON (``stream`` defaults to true), ending with the stats
object. ``keep_alive`` sets how long the instance stays after the request (an empty prompt or messages only
loads or unloads it). ``/api/generate`` renders its prompt itself when it can (llama.cpp's
``/apply-template``, or the request's own ``template``) and completes it with ``/v1/completions``, so
``context`` works both ways (llama.cpp's ``/detokenize`` and ``/tokenize``); with images, or a backend without
those routes, it is a chat. Model management (tags, ps, show, pull, copy, delete) is ``ollama_models``.

A key limited to some models sees only those: any other name gets the missing-model answer on every route.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from superollama import __version__
from superollama.control import ConnectionManager, Controller
from superollama.core import CredentialSource
from superollama.core.routing import Route
from superollama.errors import InvalidRequest, NotFound, SuperOllamaError
from superollama.gateway.exchange import exchange_of, principal_of
from superollama.gateway.lease import Lease
from superollama.gateway.ollama_connections import ConnectionModels
from superollama.gateway.ollama_models import MISSING, NDJSON, OllamaModels, ndjson_line
from superollama.gateway.ollama_native import NATIVE_OLLAMA, OllamaNative
from superollama.gateway.openai_routes import ModelTargets, read_json
from superollama.gateway.responses import json_response as _json
from superollama.gateway.seams import InstanceAccounting
from superollama.gateway.shadow import NO_SHADOW, ShadowTap
from superollama.gateway.translated import CHAT
from superollama.gateway.translated import meter as _meter
from superollama.gateway.transport import Mounts, Transport
from superollama.gateway.upstream import Upstream
from superollama.gateway.usage_estimate import estimate_text
from superollama.wire import ollama as wire

__all__ = ["OllamaRoutes"]

log = logging.getLogger("superollama.gateway.ollama")

_BATCH = re.compile(r"too large|exceeds", re.I)
_BATCH_SIZE = re.compile(r"batch size: (\d+)")
Context = Callable[[str], Awaitable[list[int] | None]]
EMBED = "/v1/embeddings"


class OllamaRoutes:
    def __init__(
        self,
        targets: ModelTargets,
        controller: Controller | None,
        agent: InstanceAccounting,
        backends: Mounts | Transport,
        timeout: float,
        *,
        connections: ConnectionManager | None = None,
        credentials: CredentialSource | None = None,
        first_token_timeout: float | None = None,
        shadow: ShadowTap | None = None,
    ) -> None:
        self._targets = targets
        self._shadow = shadow if shadow is not None else NO_SHADOW  # copies to a deployment's shadow
        self._agent = agent
        self._up = Upstream(backends, timeout, credentials, first_token_timeout=first_token_timeout)
        self._native = OllamaNative(self._up)  # an Ollama connection gets Ollama's API untranslated
        # None in a replica worker: model management is the primary's
        self._models = (
            None
            if controller is None
            else OllamaModels(targets, controller, agent, ConnectionModels(connections, targets.holder))
        )

    def register(self, app: web.Application, *, management: bool = True) -> None:
        """The routes; ``management=False``: inference and version only (a replica worker)."""
        r = app.router
        r.add_post("/api/chat", self.chat)
        r.add_post("/api/generate", self.generate)
        r.add_post("/api/embed", self.embed)
        r.add_post("/api/embeddings", self.embeddings)
        r.add_get("/api/version", self.version)
        if management:
            if self._models is None:
                raise RuntimeError("model management needs the controller (a replica worker has none)")
            self._models.register(app)

    # -- inference -------------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter_ns()
        body = await read_json(request)
        model, keep = wire.model_name(body), wire.parse_keep_alive(body.get("keep_alive"))
        payload = wire.chat_request(body, "")  # checked before anything loads
        route = self._route(request, model)
        if not payload["messages"]:
            reason = await self._load_or_unload(route, keep)
            return _json(wire.done_object(model, _now(), reason, chat=True))
        await self._targets.images.prepare(route, payload, model=model)
        await self._targets.admit(request, route, body, "chat")

        async def attempt(current: Route, more: bool) -> web.StreamResponse:
            async with self._serve(current, keep, request, elsewhere=more) as (target, load_ns):
                if target.endpoint.server_kind == NATIVE_OLLAMA:
                    return await self._native.relay(
                        request, target, "/api/chat", body, model, stream=payload["stream"]
                    )
                payload["model"] = target.endpoint.served_name
                if payload["stream"]:
                    translator = wire.StreamTranslator(model, chat=True)
                    return await self._stream(
                        request, target, CHAT, payload, translator, t0=t0, load_ns=load_ns
                    )
                sent = time.perf_counter_ns()
                resp = await self._up.post(target, CHAT, payload)
                _meter(request, resp)
                return _json(wire.chat_response(resp, model, _now(), _timing(t0, load_ns, sent)))

        answer = self._targets.with_fallbacks(request, route, attempt)
        return await self._shadow.around(request, route, CHAT, payload, answer)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter_ns()
        body = await read_json(request)
        model, keep = wire.model_name(body), wire.parse_keep_alive(body.get("keep_alive"))
        raw, context = wire.generate_flags(body)
        checked = wire.generate_chat_request(body, "")  # checks prompt, system, images, options, format …
        route = self._route(request, model)
        if not body.get("prompt"):
            reason = await self._load_or_unload(route, keep)
            return _json(wire.done_object(model, _now(), reason, chat=False))
        await self._targets.images.prepare(route, checked, model=model)
        await self._targets.admit(request, route, body, "text_completion")
        # a shadow gets the chat form (any backend takes it; the template is the shadow model's own)
        answer = self._generate(request, route, body, model=model, keep=keep, raw=raw, context=context, t0=t0)
        return await self._shadow.around(request, route, CHAT, checked, answer)

    async def _generate(
        self,
        request: web.Request,
        route: Route,
        body: dict[str, Any],
        *,
        model: str,
        keep: float | None,
        raw: bool,
        context: list[int] | None,
        t0: int,
    ) -> web.StreamResponse:
        async with self._serve(route, keep, request) as (target, load_ns):
            if target.endpoint.server_kind == NATIVE_OLLAMA:
                return await self._native.relay(
                    request, target, "/api/generate", body, model, stream=wire.is_stream(body)
                )
            served = target.endpoint.served_name
            prompt = await self._prompt(target, body, raw, context)
            if prompt is None:
                path, payload, want = "/v1/chat/completions", wire.generate_chat_request(body, served), None
            else:
                path, payload = "/v1/completions", wire.completion_request(prompt, body, served)
                want = None if raw else self._tokenize(target, prompt)
            if payload["stream"]:
                translator = wire.StreamTranslator(model, chat=False)
                return await self._stream(
                    request, target, path, payload, translator, t0=t0, load_ns=load_ns, context=want
                )
            sent = time.perf_counter_ns()
            resp = await self._up.post(target, path, payload)
            _meter(request, resp)
            tokens = await want(wire.response_text(resp)) if want else None
            return _json(wire.generate_response(resp, model, _now(), _timing(t0, load_ns, sent), tokens))

    async def embed(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter_ns()
        body = await read_json(request)
        model, keep = wire.model_name(body), wire.parse_keep_alive(body.get("keep_alive"))
        inputs = wire.embed_inputs(body)
        payload = wire.embed_request(inputs, "", body.get("dimensions"))
        truncate = body.get("truncate", True)
        if not isinstance(truncate, bool):
            raise InvalidRequest(f"truncate must be a boolean, not {truncate!r}")
        route = self._route(request, model)
        if not inputs:
            await self._load_or_unload(route, keep)
            return _json(wire.embed_response({}, model, wire.Timing(time.perf_counter_ns() - t0)))
        await self._targets.admit(request, route, body, "embeddings")
        answer = self._embed_answer(
            request, route, body, payload, model=model, keep=keep, truncate=truncate, t0=t0
        )
        return await self._shadow.around(request, route, EMBED, payload, answer)

    async def _embed_answer(
        self,
        request: web.Request,
        route: Route,
        body: dict[str, Any],
        payload: dict[str, Any],
        *,
        model: str,
        keep: float | None,
        truncate: bool,
        t0: int,
    ) -> web.StreamResponse:
        async with self._serve(route, keep, request) as (target, load_ns):
            if target.endpoint.server_kind == NATIVE_OLLAMA:
                return await self._native.relay(request, target, "/api/embed", body, model, stream=False)
            payload["model"] = target.endpoint.served_name
            resp = await self._embed(target, payload, truncate)
            _meter(request, resp)
        timing = wire.Timing(time.perf_counter_ns() - t0, load_ns)
        return _json(wire.embed_response(resp, model, timing, payload.get("dimensions")))

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """The legacy ``/api/embeddings``: one ``prompt`` → one ``embedding``."""
        body = await read_json(request)
        model, keep = wire.model_name(body), wire.parse_keep_alive(body.get("keep_alive"))
        inputs = wire.embed_inputs(body, "prompt")
        route = self._route(request, model)
        if not inputs:
            await self._load_or_unload(route, keep)
            return _json({"embedding": []})
        await self._targets.admit(request, route, body, "embeddings")
        payload = wire.embed_request(inputs, "")  # built once: the backend's request and a shadow's copy
        answer = self._legacy_embedding(request, route, body, payload, model=model, keep=keep)
        return await self._shadow.around(request, route, EMBED, payload, answer)

    async def _legacy_embedding(
        self,
        request: web.Request,
        route: Route,
        body: dict[str, Any],
        payload: dict[str, Any],
        *,
        model: str,
        keep: float | None,
    ) -> web.StreamResponse:
        async with self._serve(route, keep, request) as (target, _):
            if target.endpoint.server_kind == NATIVE_OLLAMA:
                return await self._native.relay(request, target, "/api/embeddings", body, model, stream=False)
            payload["model"] = target.endpoint.served_name
            resp = await self._embed(target, payload, truncate=True)
            _meter(request, resp)
        return _json({"embedding": wire.embeddings(resp)[0]})

    async def version(self, request: web.Request) -> web.Response:
        return _json({"version": __version__})

    # -- helpers ---------------------------------------------------------------------------------
    def _route(self, request: web.Request, name: str) -> Route:
        return self._targets.route(
            principal_of(request), name, MISSING, "model '{name}' is disabled", request=request
        )

    @contextlib.asynccontextmanager
    async def _serve(
        self, route: Route, keep: float | None, request: web.Request, *, elsewhere: bool = False
    ) -> AsyncIterator[tuple[Lease, int]]:
        """A ready instance for an admitted request (its load time in ns); ``keep_alive`` applies after
        it; ``elsewhere``: the request has a fallback (``ModelTargets.pick``)."""
        t = time.perf_counter_ns()
        async with self._targets.hold(route, request, elsewhere=elsewhere) as target:
            try:
                yield target, time.perf_counter_ns() - t
            finally:
                self._agent.set_keep_alive(route.version, keep)

    async def _load_or_unload(self, route: Route, keep: float | None) -> str:
        if keep == 0:
            await self._agent.unload(route.version, reason="keep_alive=0")
            return "unload"
        await self._targets.pick(route)
        self._agent.set_keep_alive(route.version, keep)
        return "load"

    async def _stream(
        self,
        request: web.Request,
        target: Lease,
        path: str,
        payload: dict[str, Any],
        translator: wire.StreamTranslator,
        *,
        t0: int,
        load_ns: int,
        context: Context | None = None,
    ) -> web.StreamResponse:
        sent = time.perf_counter_ns()
        first: int | None = None
        ex = exchange_of(request)
        if not target.endpoint.stream_usage:  # a connection whose server rejects stream_options
            payload.pop("stream_options", None)
        async with self._up.stream(target, path, payload) as events:
            response = web.StreamResponse(headers=NDJSON)
            await response.prepare(request)
            try:
                async for chunk in events:
                    for obj in translator.feed(chunk, _now()):
                        if first is None:
                            first = time.perf_counter_ns()
                            if ex is not None:
                                ex.mark_first_byte()
                        await response.write(ndjson_line(obj))
                _meter(request, {"usage": translator.usage})
                if ex is not None and ex.prompt_tokens is None and ex.connection is not None:
                    ex.estimated_usage(estimate_text(payload, translator.text))  # it reported none
                tokens = await context(translator.text) if context else None
                timing = _timing(t0, load_ns, sent, first)
                await response.write(ndjson_line(translator.final(_now(), timing, tokens)))
            except SuperOllamaError as exc:  # headers are gone: the error is the last line
                log.warning("%s %s: %s", request.method, request.path, exc.message)
                await response.write(ndjson_line({"error": exc.message}))
            await response.write_eof()
            return response

    async def _prompt(
        self, target: Lease, body: dict[str, Any], raw: bool, context: list[int] | None
    ) -> str | None:
        """The text to complete, or None to send the request as a chat (images; no template route)."""
        prompt = str(body["prompt"])
        if raw:
            return prompt
        if body.get("images"):
            if context:
                raise InvalidRequest("context cannot be combined with images")
            return None
        if body.get("template"):
            text = wire.render_template(body["template"], system=body.get("system") or "", prompt=prompt)
        else:
            try:
                rendered = await self._up.post(
                    target, "/apply-template", {"messages": wire.generate_messages(body)}
                )
            except NotFound:
                if context:
                    raise InvalidRequest("this model's backend cannot take 'context'") from None
                return None
            text = str(rendered.get("prompt", ""))
        if context:
            text = (
                str((await self._up.post(target, "/detokenize", {"tokens": context})).get("content", ""))
                + text
            )
        return text

    def _tokenize(self, target: Lease, prompt: str) -> Context:
        """``context`` for the answer: the tokens of prompt + response, as Ollama returns them."""

        async def tokens(response: str) -> list[int] | None:
            try:
                out = await self._up.post(target, "/tokenize", {"content": prompt + response})
            except NotFound:
                return None
            return [t if isinstance(t, int) else int(t["id"]) for t in out.get("tokens", [])]

        return tokens

    async def _embed(self, target: Lease, payload: dict[str, Any], truncate: bool) -> dict[str, Any]:
        """Embed; with ``truncate``, inputs the backend finds too long are cut to the size it names."""
        try:
            return await self._up.post(target, "/v1/embeddings", payload)
        except SuperOllamaError as exc:
            limit = _BATCH_SIZE.search(exc.message)
            if not _BATCH.search(exc.message):
                raise
            if not truncate or limit is None:
                raise InvalidRequest(f"input is too long for the model: {exc.message}") from exc
            cut = []
            for text in payload["input"]:
                tokens = (await self._up.post(target, "/tokenize", {"content": text})).get("tokens", [])
                cut.append(tokens[: int(limit.group(1))])
            return await self._up.post(target, "/v1/embeddings", {**payload, "input": cut})


def _timing(t0: int, load_ns: int, sent: int, first: int | None = None) -> wire.Timing:
    end = time.perf_counter_ns()
    if first is None:  # not streamed: all of the backend's time counts as generation
        return wire.Timing(end - t0, load_ns, 0, end - sent)
    return wire.Timing(end - t0, load_ns, first - sent, end - first)


def _now() -> str:
    return wire.rfc3339(datetime.now(UTC))
