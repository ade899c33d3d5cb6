"""Grounded chat: a model or deployment name with a *grounding* (vector store ids, ``top_k``, a score
threshold, a prompt template) answers ``/v1/chat/completions`` from the user's documents, for any client.

The last user message is the query; the ``top_k`` best chunks over the named vector stores (at least the
threshold) fill the template's ``{context}`` (``{question}``: the query), which goes first as a system
message; then the request takes the chat path of every request (route → admit → hold, fallbacks), and the
answer's message carries one ``annotations`` entry per source: ``{"type": "file_citation", "index",
"file_id", "filename", "file_citation": {"file_id", "filename", "score", "quote"}}`` (the Responses API's
citation fields, plus the Assistants API's nested object) — the OpenAI SDK keeps them as given. Streamed,
the annotations come in the first chunk's delta.

Groundings are set through the admin API (``/admin/v1/grounding``) and held in memory: the hot path reads
no table to learn whether a name is grounded; a change reloads them (the ``deployments`` change kind).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web

from superollama.core.routing import Route
from superollama.errors import InvalidRequest, NotFound, SuperOllamaError
from superollama.gateway.exchange import exchange_of, principal_of
from superollama.gateway.openai_routes import ModelTargets
from superollama.gateway.translated import Backend, open_sse
from superollama.plugins.rag.service import VectorStores
from superollama.plugins.rag.vectors import Hit
from superollama.registry._rag import GroundingRecord

__all__ = ["DEFAULT_TEMPLATE", "Grounding", "grounding_json", "sources_prompt"]

log = logging.getLogger("superollama.rag.grounding")

DEFAULT_TEMPLATE = (
    "Answer the question using only the sources below. If they do not contain the answer, say so.\n\n"
    "Sources:\n{context}"
)


def sources_prompt(template: str | None, question: str, sources: Sequence[tuple[str, str]]) -> str:
    """The system text giving the model its ``sources`` (filename, text), numbered from 1, in ``template``
    (``DEFAULT_TEMPLATE`` if None)."""
    context = "\n\n".join(f"[{i + 1}] {filename}\n{text}" for i, (filename, text) in enumerate(sources))
    return (template or DEFAULT_TEMPLATE).format(context=context or "(no source matched)", question=question)


def grounding_json(g: GroundingRecord) -> dict[str, Any]:
    return {
        "name": g.name,
        "vector_store_ids": list(g.vector_store_ids),
        "top_k": g.top_k,
        "score_threshold": g.score_threshold,
        "template": g.template,
        "updated_at": g.updated_at.isoformat() if g.updated_at else None,
    }


class Grounding:
    def __init__(self, stores: VectorStores, targets: ModelTargets, backend: Backend) -> None:
        self._stores = stores
        self._targets = targets
        self._backend = backend
        self._by_name: dict[str, GroundingRecord] = {}

    async def reload(self) -> None:
        self._by_name = {g.name: g for g in await self._stores.repo.groundings()}

    def applies(self, model: str) -> bool:
        return model in self._by_name

    async def put(self, name: str, body: Mapping[str, Any]) -> GroundingRecord:
        ids = body.get("vector_store_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise InvalidRequest(
                "vector_store_ids must list at least one vector store", param="vector_store_ids"
            )
        for store_id in ids:
            if await self._stores.repo.any_store(store_id) is None:
                raise NotFound(f"No vector store found with id '{store_id}'.", param="vector_store_ids")
        top_k = body.get("top_k", 4)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 50:
            raise InvalidRequest("top_k must be an integer from 1 to 50", param="top_k")
        threshold = body.get("score_threshold")
        if threshold is not None and (
            not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 <= threshold <= 1
        ):
            raise InvalidRequest("score_threshold must be from 0 to 1", param="score_threshold")
        template = body.get("template")
        if template is not None and (not isinstance(template, str) or "{context}" not in template):
            raise InvalidRequest("template must be a string with a {context} placeholder", param="template")
        if template is not None:
            try:
                template.format(context="", question="")
            except (KeyError, IndexError, ValueError) as exc:
                raise InvalidRequest(
                    f"template may use only {{context}} and {{question}} (double other braces): {exc}",
                    param="template",
                ) from None
        record = await self._stores.repo.put_grounding(
            GroundingRecord(
                name,
                ids,
                top_k,
                None if threshold is None else float(threshold),
                template,
            )
        )
        await self.reload()
        return record

    async def remove(self, name: str) -> None:
        if not await self._stores.repo.delete_grounding(name):
            raise NotFound(f"no grounding for {name!r}", param="name")
        await self.reload()

    def all(self) -> list[GroundingRecord]:
        return sorted(self._by_name.values(), key=lambda g: g.name)

    # -- the chat ------------------------------------------------------------------------------------
    async def retrieve(self, option: GroundingRecord, query: str) -> list[Hit]:
        hits: list[Hit] = []
        for store_id in option.vector_store_ids:
            store = await self._stores.repo.any_store(store_id)
            if store is None:  # removed since: the others still answer
                log.warning("grounding %s: vector store %s no longer exists", option.name, store_id)
                continue
            hits += await self._stores.search(store, [query], option.top_k, None, option.score_threshold)
        return sorted(hits, key=lambda h: -h.score)[: option.top_k]

    async def chat(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        option = self._by_name[body["model"]]
        query = _last_user_text(body.get("messages") or [])
        hits = await self.retrieve(option, query) if query else []
        system = sources_prompt(option.template, query, [(h.filename, h.text) for h in hits])
        body = {**body, "messages": [{"role": "system", "content": system}, *body["messages"]]}
        annotations = [_annotation(i, h) for i, h in enumerate(hits)]
        route = self._targets.route(principal_of(request), body["model"], request=request, body=body)
        await self._targets.admit(request, route, body, "chat")
        stream = body.get("stream") is True

        async def attempt(current: Route, more: bool) -> web.StreamResponse:
            async with self._targets.hold(current, request, elsewhere=more) as target:
                payload = {**body, "model": target.endpoint.served_name}
                if stream:
                    return await self._stream(request, target, payload, annotations, body["model"])
                answer = await self._backend.chat(request, target, payload)
            for choice in answer.get("choices") or []:
                message = choice.get("message")
                if isinstance(message, dict):
                    message["annotations"] = annotations
            answer["model"] = body["model"]
            return web.Response(body=orjson.dumps(answer), content_type="application/json")

        return await self._targets.with_fallbacks(request, route, attempt)

    async def _stream(
        self,
        request: web.Request,
        target: Any,
        payload: dict[str, Any],
        annotations: Sequence[dict[str, Any]],
        model: str,
    ) -> web.StreamResponse:
        text: list[str] = []
        counts: tuple[int, int] | None = None
        async with self._backend.stream(request, target, payload) as chunks:
            response = await open_sse(request)
            first = True
            try:
                async for chunk in chunks:
                    chunk["model"] = model
                    usage = chunk.get("usage")
                    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
                        counts = (usage["prompt_tokens"], int(usage.get("completion_tokens") or 0))
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        text.append(str(delta.get("content") or ""))
                        if first:
                            delta["annotations"] = list(annotations)
                            choice["delta"] = delta
                            first = False
                    await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            except SuperOllamaError as exc:  # headers are gone: the error is the last event
                ex = exchange_of(request)
                if ex is not None:
                    ex.error_type, ex.error = exc.code or exc.type, exc.message
                err = {"error": {"message": exc.message, "type": exc.type, "code": exc.code}}
                await response.write(b"data: " + orjson.dumps(err) + b"\n\n")
                await response.write_eof()
                return response
        self._backend.settle_stream(request, payload, "".join(text), counts)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
                )
    return ""


def _annotation(i: int, hit: Hit) -> dict[str, Any]:
    return {
        "type": "file_citation",
        "index": i,
        "file_id": hit.file_id,
        "filename": hit.filename,
        "file_citation": {
            "file_id": hit.file_id,
            "filename": hit.filename,
            "score": round(hit.score, 6),
            "quote": hit.text,
        },
    }
