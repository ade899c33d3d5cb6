"""Admin API for connections: register (with options, e.g. ``{"stream_usage": false}``), list, show,
refresh, enable/disable, remove external backends; and the models on a connected server, managed through
its API (Ollama): pull (NDJSON progress, as Ollama's ``/api/pull`` streams it), copy, delete."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from superollama.admin.routes import PREFIX, actor_of
from superollama.control import ConnectionManager
from superollama.errors import InvalidRequest
from superollama.gateway import read_json
from superollama.gateway.responses import json_response as _json

__all__ = ["ConnectionRoutes"]


class ConnectionRoutes:
    def __init__(self, connections: ConnectionManager) -> None:
        self._connections = connections

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get(f"{PREFIX}/connections", self.list)
        r.add_post(f"{PREFIX}/connections", self.add)
        r.add_get(f"{PREFIX}/connections/{{name}}", self.get)
        r.add_post(f"{PREFIX}/connections/{{name}}/refresh", self.refresh)
        r.add_post(f"{PREFIX}/connections/{{name}}/enable", self.enable)
        r.add_post(f"{PREFIX}/connections/{{name}}/disable", self.disable)
        r.add_delete(f"{PREFIX}/connections/{{name}}", self.remove)
        r.add_post(f"{PREFIX}/connections/{{name}}/pull", self.pull)
        r.add_post(f"{PREFIX}/connections/{{name}}/copy", self.copy)
        r.add_delete(f"{PREFIX}/connections/{{name}}/models/{{model:.+}}", self.delete_model)

    async def list(self, request: web.Request) -> web.Response:
        return _json({"connections": [s.as_dict() for s in self._connections.states()]})

    async def add(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        kind, url = body.get("kind"), body.get("url")
        if not isinstance(kind, str) or not isinstance(url, str):
            raise InvalidRequest(
                "'kind' and 'url' are required strings", param="kind" if kind is None else "url"
            )
        name, api_key, options = body.get("name"), body.get("api_key"), body.get("options")
        if options is not None and not isinstance(options, dict):
            raise InvalidRequest("'options' must be an object", param="options")
        state = await self._connections.add(
            kind,
            url,
            name=name if isinstance(name, str) else None,
            api_key=api_key if isinstance(api_key, str) else None,
            options=options,
            actor=actor_of(request),
        )
        return _json(state.as_dict(), status=201)

    async def get(self, request: web.Request) -> web.Response:
        return _json(_state(self._connections, request.match_info["name"]))

    async def refresh(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self._connections.refresh(name)
        return _json(_state(self._connections, name))

    async def enable(self, request: web.Request) -> web.Response:
        state = await self._connections.set_enabled(request.match_info["name"], True, actor=actor_of(request))
        return _json(state.as_dict())

    async def disable(self, request: web.Request) -> web.Response:
        state = await self._connections.set_enabled(
            request.match_info["name"], False, actor=actor_of(request)
        )
        return _json(state.as_dict())

    async def remove(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self._connections.remove(name, actor=actor_of(request))
        return _json({"deleted": name})

    async def pull(self, request: web.Request) -> web.StreamResponse:
        """Pull ``model`` onto the connected server. ``stream`` (default true): its progress as NDJSON,
        ending with ``{"status": "success", "model", "connection"}`` or ``{"status": "error", "error"}``
        (the pull goes on if the client leaves); ``stream: false``: wait, answer the connection."""
        name = request.match_info["name"]
        body = await read_json(request)
        model, actor = _text(body, "model"), actor_of(request)
        if body.get("stream", True) is False:
            state = await self._connections.pull_model(name, model, actor=actor)
            return _json({"status": "success", "connection": state.as_dict()})
        events = self._connections.pull_model_stream(name, model, actor=actor)  # refusals raise here
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        async for event in events:
            await response.write(orjson.dumps(event) + b"\n")
        await response.write_eof()
        return response

    async def copy(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        state = await self._connections.copy_model(
            request.match_info["name"],
            _text(body, "source"),
            _text(body, "destination"),
            actor=actor_of(request),
        )
        return _json(state.as_dict())

    async def delete_model(self, request: web.Request) -> web.Response:
        name, model = request.match_info["name"], request.match_info["model"]
        state = await self._connections.delete_model(name, model, actor=actor_of(request))
        return _json(state.as_dict())


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{key}' must be a non-empty string", param=key)
    return value


def _state(connections: ConnectionManager, name: str) -> dict[str, Any]:
    return connections.get(name).as_dict()
