"""``/v1/responses``: OpenAI's Responses API, for every model, over the chat API backends speak.

``POST`` takes the path of ``/v1/chat/completions`` (route → admit → hold a ready instance), translated by
``wire.responses``; streamed answers are the API's semantic events (``wire.responses_stream``). Usage is
metered on the exchange like any other request.

Stored responses (``store``, true by default) are written to the registry before the answer is returned,
so a ``GET`` or a ``previous_response_id`` right after finds them: this is the one data-plane path that
touches the database, and only for a client that asked for storage (``store: false`` keeps nothing).
A stored response belongs to the key that created it; to another key it does not exist (404).

A ``file_search`` tool is served by the RAG plugin's ``FileSearch`` (the search of
``/v1/vector_stores/{id}/search``, with the key's access rules): the stores are searched before the chat,
and before a streamed answer opens, so a store that is unknown or not the key's is a 404 and a bad filter
a 400; the sources reach the model in the leading system message (with the instructions, if any), which
is not kept in the stored conversation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from superollama.core.routing import Route
from superollama.errors import InvalidRequest, NotFound, SuperOllamaError
from superollama.gateway.exchange import exchange_of, principal_of
from superollama.gateway.lease import Lease
from superollama.gateway.openai_routes import OPENAI_MISSING, ModelTargets, read_json
from superollama.gateway.responses import json_response
from superollama.gateway.shadow import NO_SHADOW, ShadowTap
from superollama.gateway.translated import CHAT, Backend, open_sse
from superollama.registry._responses import StoredResponse
from superollama.wire import responses as wire
from superollama.wire.responses_stream import ResponseStream, sse

__all__ = ["FileSearch", "ResponseStore", "ResponsesRoutes"]

log = logging.getLogger("superollama.gateway.responses")


class ResponseStore(Protocol):
    async def add(
        self, response: Mapping[str, Any], conversation: Sequence[Mapping[str, Any]], *, key_id: str | None
    ) -> None: ...

    async def find(self, response_id: str, *, key_id: str | None) -> StoredResponse | None: ...

    async def delete(self, response_id: str, *, key_id: str | None) -> bool: ...


class FileSearch(Protocol):
    """The ``file_search`` tool's search (``plugins/rag``)."""

    async def search(
        self, tool: wire.FileSearchTool, queries: Sequence[str], *, key_id: str | None
    ) -> list[wire.Found]:
        """The best chunks over the tool's vector stores, best first (none without ``queries``): a 404
        for a store the key cannot read, a 400 for filters that are not OpenAI's, in every case."""
        ...

    def prompt(self, question: str, found: Sequence[wire.Found]) -> str:
        """The system text that gives the model the sources."""
        ...


class _Searched:
    """A file search done for a request: its item's id, queries, what it found."""

    def __init__(self, queries: list[str], found: list[wire.Found]) -> None:
        self.id = wire.item_id("fs")
        self.queries = queries
        self.found = found
        self.citations = wire.citations(found)


class ResponsesRoutes:
    def __init__(
        self,
        targets: ModelTargets,
        backend: Backend,
        store: ResponseStore,
        *,
        shadow: ShadowTap | None = None,
        file_search: FileSearch | None = None,
    ) -> None:
        self._targets = targets
        self._backend = backend
        self._store = store
        self._file_search = file_search
        self._shadow = shadow if shadow is not None else NO_SHADOW  # copies to a deployment's shadow

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/responses", self.create)
        app.router.add_get("/v1/responses/{id}", self.get)
        app.router.add_delete("/v1/responses/{id}", self.delete)

    async def create(self, request: web.Request) -> web.StreamResponse:
        req = wire.parse(wire.ResponsesRequest, await read_json(request))
        route = self._targets.route(principal_of(request), req.model, OPENAI_MISSING)
        history: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            previous = await self._store.find(req.previous_response_id, key_id=_key(request))
            if previous is None:
                raise NotFound(
                    f"Previous response with id '{req.previous_response_id}' not found.",
                    param="previous_response_id",
                )
            history = previous.conversation
        payload = wire.chat_request(req, req.model, history)
        kept = list(payload["messages"])  # what a later response continues from (no sources)
        searched = await self._search(request, req, payload)
        await self._targets.images.prepare(route, payload, model=req.model)  # input_image URLs fetched here
        await self._targets.admit(request, route, payload, "chat")
        return await self._shadow.around(
            request,
            route,
            CHAT,
            payload,
            self._answer(request, route, payload, req, kept=kept, searched=searched),
        )

    async def _search(
        self, request: web.Request, req: wire.ResponsesRequest, payload: dict[str, Any]
    ) -> _Searched | None:
        """The file search of a request with a ``file_search`` tool; its sources join the system message."""
        tool = req.file_search
        if tool is None or req.tool_choice == "none":
            return None
        if self._file_search is None:
            raise InvalidRequest("the file_search tool is not available on this server", param="tools")
        query = wire.last_user_text(payload["messages"])
        queries = [query] if query else []
        found = await self._file_search.search(tool, queries, key_id=_key(request))
        sources = self._file_search.prompt(query, found)
        messages = payload["messages"]
        if req.instructions:  # one leading system message: some chat templates take no second one
            messages[0] = {"role": "system", "content": f"{req.instructions}\n\n{sources}"}
        else:
            messages.insert(0, {"role": "system", "content": sources})
        return _Searched(queries, found)

    async def _answer(
        self,
        request: web.Request,
        route: Route,
        payload: dict[str, Any],
        req: wire.ResponsesRequest,
        *,
        kept: list[dict[str, Any]],
        searched: _Searched | None,
    ) -> web.StreamResponse:
        resp_id, created = wire.response_id(), int(time.time())
        async with self._targets.hold(route, request) as target:
            payload["model"] = target.endpoint.served_name
            images = wire.has_images(payload["messages"])
            if req.stream:
                events = ResponseStream(req, resp_id, created)
                return await self._stream(
                    request, target, payload, req, kept=kept, searched=searched, events=events
                )
            answer = await self._backend.chat(request, target, payload, images=images)
        ex = exchange_of(request)
        counts = (ex.prompt_tokens or 0, ex.completion_tokens or 0) if ex is not None else None
        finish = (answer.get("choices") or [{}])[0].get("finish_reason")
        output = []
        if searched is not None:
            output.append(wire.file_search_item(searched.id, searched.queries, _results(req, searched)))
        output += wire.output_items(answer, searched.citations if searched is not None else ())
        response = wire.response_object(req, resp_id, created, output=output, counts=counts, finish=finish)
        await self._keep(request, req, kept, response)
        return json_response(response)

    async def _stream(
        self,
        request: web.Request,
        target: Lease,
        payload: dict[str, Any],
        req: wire.ResponsesRequest,
        *,
        kept: list[dict[str, Any]],
        searched: _Searched | None,
        events: ResponseStream,
    ) -> web.StreamResponse:
        images = wire.has_images(payload["messages"])
        async with self._backend.stream(request, target, payload, images=images) as chunks:
            response = await open_sse(request)
            await _send(response, events.start())
            if searched is not None:
                events.annotations = searched.citations
                await _send(
                    response, events.file_search(searched.id, searched.queries, _results(req, searched))
                )
            try:
                async for chunk in chunks:
                    await _send(response, events.feed(chunk))
            except SuperOllamaError as exc:  # headers are gone: the error is the last event
                log.warning("%s %s: %s", request.method, request.path, exc.message)
                ex = exchange_of(request)
                if ex is not None:
                    ex.error_type, ex.error = exc.code or exc.type, exc.message
                await _send(response, events.failed(exc.message))
                await response.write_eof()
                return response
        self._backend.settle_stream(request, payload, events.text, events.counts)
        ex = exchange_of(request)
        if events.counts is None and ex is not None and ex.prompt_tokens is not None:
            events.counts = (ex.prompt_tokens, ex.completion_tokens or 0)
        final = events.end()
        await self._keep(request, req, kept, final[-1]["response"])
        await _send(response, final)
        await response.write_eof()
        return response

    async def _keep(
        self,
        request: web.Request,
        req: wire.ResponsesRequest,
        messages: list[dict[str, Any]],
        response: dict[str, Any],
    ) -> None:
        ex = exchange_of(request)
        if ex is not None and ex.capture:
            ex.output = response["output"]
        if req.store:
            conversation = wire.conversation(req, messages, response["output"])
            await self._store.add(response, conversation, key_id=_key(request))

    async def get(self, request: web.Request) -> web.Response:
        stored = await self._store.find(request.match_info["id"], key_id=_key(request))
        if stored is None:
            raise _missing(request.match_info["id"])
        return json_response(stored.response)

    async def delete(self, request: web.Request) -> web.Response:
        response_id = request.match_info["id"]
        if not await self._store.delete(response_id, key_id=_key(request)):
            raise _missing(response_id)
        return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


def _key(request: web.Request) -> str | None:
    principal = principal_of(request)
    return principal.key_id if principal is not None else None


def _results(req: wire.ResponsesRequest, searched: _Searched) -> list[wire.Found] | None:
    return searched.found if wire.FILE_SEARCH_RESULTS in (req.include or ()) else None


def _missing(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")


async def _send(response: web.StreamResponse, events: list[dict[str, Any]]) -> None:
    if events:
        await response.write(b"".join(sse(e) for e in events))
