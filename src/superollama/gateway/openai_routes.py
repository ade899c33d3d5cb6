"""``/v1/*``: the OpenAI API on the data plane. One small handler per endpoint, one shared path:

read body (bounded) → check → look up the snapshot → pick (or start) an instance → relay.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from superollama.control import Route, RouteTarget, RoutingHolder
from superollama.errors import InvalidRequest, ModelNotFound
from superollama.gateway.exchange import exchange_of, principal_of
from superollama.gateway.lease import Lease
from superollama.gateway.relay import Relay
from superollama.gateway.responses import json_response as _json
from superollama.gateway.seams import InstanceAccounting, InstanceStarter
from superollama.security import Principal, Security, estimate_tokens
from superollama.wire import openai as wire

__all__ = ["OPENAI_MISSING", "ModelTargets", "OpenAIRoutes", "read_json"]

Check = Callable[[Mapping[str, Any]], None]
OPENAI_MISSING = "The model '{name}' does not exist"


class ModelTargets:
    """Shared by every API edge: a client's model name → its route → a ready instance, with accounting.

    ``route`` raises ``ModelNotFound`` with the edge's own wording; ``pick`` starts an instance when none
    is ready (scale from zero); ``hold`` picks and counts the request in flight until it is done (on a
    replacement, if its instance died before the request reached it: see ``Lease``).

    Scope: a model outside the caller's key patterns is, to that caller, a model that does not exist —
    ``route`` answers exactly the missing-model error (same status, code and message, naming what was
    asked), before anything else is looked at (enabled, loaded, rate limits), and the listings leave it
    out. That is the only way a key cannot learn which models exist beyond its own.
    """

    def __init__(
        self,
        holder: RoutingHolder,
        controller: InstanceStarter,
        agent: InstanceAccounting,
        security: Security,
    ) -> None:
        self.holder = holder
        self.controller = controller
        self.agent = agent
        self.security = security

    def route(
        self,
        principal: Principal | None,
        name: str,
        missing: str = OPENAI_MISSING,
        disabled: str = "The model '{name}' is disabled",
    ) -> Route:
        """The enabled route ``name`` resolves to for ``principal`` (None: no key, or a caller that was
        checked already, as the primary's ``ensure`` for a replica)."""
        route = self.find(principal, name)
        if route is None:
            raise ModelNotFound(missing.format(name=name), param="model")
        if not route.enabled:
            raise ModelNotFound(disabled.format(name=name), param="model")
        return route

    def find(self, principal: Principal | None, name: str) -> Route | None:
        """The route ``name`` resolves to (enabled or not) if the caller may see it, else None."""
        route = self.holder.table.lookup(name)
        if route is None or not self.security.may_see(principal, route.name):
            return None
        return route

    def visible(self, request: web.Request) -> list[Route]:
        """The enabled routes the caller's key may use, by name."""
        routes = {r.name: r for r in self.holder.table.enabled()}
        names = self.security.visible_models(principal_of(request), routes)
        return [routes[n] for n in sorted(names)]

    async def pick(self, route: Route) -> RouteTarget:
        if route.targets:
            if len(route.targets) == 1:
                return route.targets[0]
            return min(route.targets, key=lambda t: self.agent.in_flight(t.instance_id))
        return await self.controller.ensure_ready(route)

    async def admit(
        self, request: web.Request, route: Route, body: Mapping[str, Any], operation: str
    ) -> None:
        """Model permission, budget and rate limit for this request (403 / 429), recorded on its exchange."""
        ex = exchange_of(request)
        if ex is None:
            return
        ex.model, ex.version, ex.connection = (
            str(body.get("model") or route.name),
            route.version,
            route.connection,
        )
        ex.operation, ex.stream = operation, body.get("stream") is True
        if ex.capture:
            ex.input = body.get("messages", body.get("prompt", body.get("input")))
        ex.admission = await self.security.admit(ex.principal, route.name, estimate_tokens(body))
        ex.headers.update(ex.admission.headers)

    @contextlib.asynccontextmanager
    async def hold(self, route: Route, request: web.Request | None = None) -> AsyncIterator[Lease]:
        """A ready target for the route (started if need be), counted in flight until the block ends."""
        ex = exchange_of(request) if request is not None else None
        route = self.holder.table.routes.get(route.name, route)  # the latest: the request waited on admission
        t0 = time.perf_counter()
        target = await self.pick(route)
        if ex is not None:
            if not route.targets:
                ex.load_wait = time.perf_counter() - t0
            ex.instance = None if route.connection else target.instance_id
        lease = Lease(route, target, self.controller, self.agent)
        try:
            yield lease
        finally:
            lease.release()
            if ex is not None and route.connection is None:
                ex.instance = lease.instance_id


class OpenAIRoutes:
    def __init__(self, holder: RoutingHolder, targets: ModelTargets, relay: Relay) -> None:
        self._holder = holder
        self._targets = targets
        self._relay = relay

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        app.router.add_post(
            "/v1/chat/completions", self._endpoint("/v1/chat/completions", wire.check_chat, "chat")
        )
        app.router.add_post(
            "/v1/completions", self._endpoint("/v1/completions", wire.check_completion, "text_completion")
        )
        app.router.add_post(
            "/v1/embeddings", self._endpoint("/v1/embeddings", wire.check_embeddings, "embeddings")
        )

    async def list_models(self, request: web.Request) -> web.Response:
        routes = self._targets.visible(request)
        return _json(wire.model_list((r.name, r.created, r.connection or "superollama") for r in routes))

    async def get_model(self, request: web.Request) -> web.Response:
        route = self._targets.route(principal_of(request), request.match_info["model"])
        return _json(wire.model_object(route.name, route.created, route.connection or "superollama"))

    def _endpoint(self, path: str, check: Check, operation: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await read_json(request)
            check(body)
            route = self._targets.route(principal_of(request), body["model"])
            await self._targets.admit(request, route, body, operation)
            async with self._targets.hold(route, request) as target:
                body["model"] = target.endpoint.served_name
                return await self._relay.forward(request, target, path, body, body.get("stream") is True)

        return handle


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong (413 past the size limit)."""
    raw = await request.read()
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body
