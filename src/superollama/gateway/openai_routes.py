"""``/v1/*``: the OpenAI API on the data plane. One small handler per endpoint, one shared path:

read body (bounded) → check → look up the snapshot → pick (or start) an instance → relay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from superollama.agent import LocalAgent
from superollama.control import Controller, Route, RouteTarget, RoutingHolder
from superollama.errors import InvalidRequest, ModelNotFound
from superollama.gateway.relay import Relay
from superollama.wire import openai as wire

__all__ = ["OpenAIRoutes"]

Check = Callable[[Mapping[str, Any]], None]


class OpenAIRoutes:
    def __init__(
        self, holder: RoutingHolder, controller: Controller, agent: LocalAgent, relay: Relay
    ) -> None:
        self._holder = holder
        self._controller = controller
        self._agent = agent
        self._relay = relay

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        app.router.add_post("/v1/chat/completions", self._endpoint("/v1/chat/completions", wire.check_chat))
        app.router.add_post("/v1/completions", self._endpoint("/v1/completions", wire.check_completion))
        app.router.add_post("/v1/embeddings", self._endpoint("/v1/embeddings", wire.check_embeddings))

    async def list_models(self, request: web.Request) -> web.Response:
        routes = sorted(self._holder.table.enabled(), key=lambda r: r.name)
        return _json(wire.model_list((r.name, r.created) for r in routes))

    async def get_model(self, request: web.Request) -> web.Response:
        route = self._route(request.match_info["model"])
        return _json(wire.model_object(route.name, route.created))

    def _endpoint(self, path: str, check: Check) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await read_json(request)
            check(body)
            route = self._route(body["model"])
            target = await self._pick(route)
            body["model"] = target.endpoint.served_name
            self._agent.acquire(target.instance_id)
            try:
                return await self._relay.forward(request, target, path, body, body.get("stream") is True)
            finally:
                self._agent.release(target.instance_id)

        return handle

    def _route(self, name: str) -> Route:
        route = self._holder.table.lookup(name)
        if route is None:
            raise ModelNotFound(f"The model '{name}' does not exist", param="model")
        if not route.enabled:
            raise ModelNotFound(f"The model '{name}' is disabled", param="model")
        return route

    async def _pick(self, route: Route) -> RouteTarget:
        if route.targets:
            if len(route.targets) == 1:
                return route.targets[0]
            return min(route.targets, key=lambda t: self._agent.in_flight(t.instance_id))
        return await self._controller.ensure_ready(route)


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


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
