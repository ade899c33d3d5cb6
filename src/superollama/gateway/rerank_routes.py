"""``/v1/rerank`` and ``/v2/rerank``: rerank documents against a query, on every backend that can.

The request takes the path of ``/v1/embeddings`` — route (scope, deployments) → admit (model permission,
budget, rate limit, metered per key) → hold a ready instance (scale from zero, breakers, retries) →
fallbacks on a 5xx or no answer — and is then translated for the backend (``wire.rerank``):

- an OpenAI-compatible backend (our llama.cpp and transformers instances, vLLM and other
  OpenAI-compatible connections) is sent the Jina/vLLM body on ``/v1/rerank``;
- a Hugging Face connection (kind ``tgi``) is sent text-embeddings-inference's ``POST /rerank``: TEI
  serves it for cross-encoders; TGI proper has no such route and answers 404;
- an Ollama connection has no rerank API: a 400 at once.

A backend that has no rerank route or model (404, 405, 501, TEI's 424 "not a re-ranker", our worker's
``wrong_task``) makes a 400 that names the model and why; it is an answer, not a failure, so it does not
count against the instance's breaker. A 5xx is a failure (a fallback may answer). Scores are re-sorted and
cut to ``top_n`` here, so every backend gives the client the same shape.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from functools import partial

import orjson
from aiohttp import web

from superollama.core.routing import Route
from superollama.errors import InvalidRequest, SuperOllamaError, UnsupportedOperation, UpstreamError
from superollama.gateway.exchange import exchange_of, principal_of
from superollama.gateway.lease import Lease
from superollama.gateway.openai_routes import ModelTargets, read_json
from superollama.gateway.responses import json_response
from superollama.gateway.translated import Backend
from superollama.security import estimate_tokens
from superollama.wire import rerank as wire
from superollama.wire.ollama_responses import error_message

__all__ = ["RERANK_DIALECTS", "RerankRoutes"]

# A connection's kind (``Endpoint.server_kind``), else the protocol of an instance we run
# (``Endpoint.provider``) → (path, dialect) of its rerank API; one not here has none.
RERANK_DIALECTS: Mapping[str, tuple[str, wire.Dialect]] = {
    "openai": ("/v1/rerank", "jina"),
    "tgi": ("/rerank", "tei"),
}
_NOT_HERE = (404, 405, 501)  # no such route, or a server that says it does not do this
_NOT_A_RERANKER = ("not a re-ranker", "wrong_task", "does not support reranking")


class RerankRoutes:
    def __init__(self, targets: ModelTargets, backend: Backend) -> None:
        self._targets = targets
        self._backend = backend

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/rerank", partial(self.rerank, api="v1"))
        app.router.add_post("/v2/rerank", partial(self.rerank, api="v2"))

    async def rerank(self, request: web.Request, *, api: wire.Api) -> web.StreamResponse:
        body = await read_json(request)
        req = wire.parse(body)
        route = self._targets.route(principal_of(request), req.model, request=request, body=body)
        estimate = wire.admission_body(req)
        await self._targets.admit(request, route, estimate, "rerank")
        ex = exchange_of(request)
        if ex is not None:
            ex.search_units = wire.search_units(req)
            if ex.capture:
                ex.input = {"query": req.query, "documents": list(req.documents)}

        async def attempt(current: Route, more: bool) -> web.StreamResponse:
            async with self._targets.hold(current, request, elsewhere=more) as target:
                ranked = await self._rank(target, req)
            tokens = ranked.tokens
            if ex is not None:
                ex.mark_first_byte()
                if tokens is not None:
                    ex.usage((tokens, 0))
                else:
                    ex.estimated_usage((estimate_tokens(estimate), 0))
            answer = wire.render(req, ranked, api=api, response_id=str(uuid.uuid4()), tokens=tokens)
            if ex is not None and ex.capture:
                ex.output = answer["results"]
            return json_response(answer)

        return await self._targets.with_fallbacks(request, route, attempt)

    async def _rank(self, target: Lease, req: wire.RerankRequest) -> wire.Ranked:
        """The backend's scores for ``req`` (a 400 when it cannot rerank)."""
        ep = target.endpoint
        kind = ep.server_kind or ep.provider
        found = RERANK_DIALECTS.get(kind)
        if found is None:
            raise UnsupportedOperation(
                f"model '{req.model}' cannot rerank: {kind} servers have no rerank API", param="model"
            )
        path, dialect = found
        payload = wire.backend_body(req, ep.served_name, dialect)
        async with self._backend.up.open(target, path, payload, errors=False) as upstream:
            raw = await upstream.read()
            status, reason, headers = upstream.status, upstream.reason or "", upstream.headers
        if status >= 400:
            raise _refusal(req.model, status, raw, reason)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer = None
        ranked = wire.parse_backend(answer, dialect, len(req.documents))
        if ranked is None:
            raise _bad_gateway(f"the backend of '{req.model}' answered {path} with no rerank results")
        if ranked.tokens is None:  # TEI says it in a header
            counted = headers.get("x-compute-tokens", "")
            if counted.isdigit():
                ranked = wire.Ranked(ranked.scores, int(counted))
        return ranked


def _refusal(model: str, status: int, raw: bytes, reason: str) -> SuperOllamaError:
    """A backend's error answer to a rerank, as ours."""
    message = error_message(raw, reason or f"HTTP {status}")
    if status in _NOT_HERE or (
        status < 500 and any(m in raw.decode("utf-8", "replace") for m in _NOT_A_RERANKER)
    ):
        return UnsupportedOperation(
            f"model '{model}' cannot rerank: it is not served as a rerank (cross-encoder) model "
            f"(its backend answered {status}: {message})",
            param="model",
        )
    if status >= 500:
        return _bad_gateway(f"the backend of '{model}' failed: {message}")
    bad = InvalidRequest(message)
    bad.status = status
    return bad


def _bad_gateway(message: str) -> UpstreamError:
    err = UpstreamError(message, retry_after=1)
    err.status = 502
    return err
