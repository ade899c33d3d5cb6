"""Admin API for connections: register, list, refresh, enable/disable, remove external backends."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from superollama.admin.routes import PREFIX, actor_of
from superollama.control import ConnectionManager
from superollama.errors import InvalidRequest
from superollama.gateway import read_json

__all__ = ["ConnectionRoutes"]


class ConnectionRoutes:
    def __init__(self, connections: ConnectionManager) -> None:
        self._connections = connections

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get(f"{PREFIX}/connections", self.list)
        r.add_post(f"{PREFIX}/connections", self.add)
        r.add_post(f"{PREFIX}/connections/{{name}}/refresh", self.refresh)
        r.add_post(f"{PREFIX}/connections/{{name}}/enable", self.enable)
        r.add_post(f"{PREFIX}/connections/{{name}}/disable", self.disable)
        r.add_delete(f"{PREFIX}/connections/{{name}}", self.remove)

    async def list(self, request: web.Request) -> web.Response:
        return _json({"connections": [s.as_dict() for s in self._connections.states()]})

    async def add(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        kind, url = body.get("kind"), body.get("url")
        if not isinstance(kind, str) or not isinstance(url, str):
            raise InvalidRequest(
                "'kind' and 'url' are required strings", param="kind" if kind is None else "url"
            )
        name, api_key = body.get("name"), body.get("api_key")
        state = await self._connections.add(
            kind,
            url,
            name=name if isinstance(name, str) else None,
            api_key=api_key if isinstance(api_key, str) else None,
            actor=actor_of(request),
        )
        return _json(state.as_dict(), status=201)

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


def _state(connections: ConnectionManager, name: str) -> dict[str, Any]:
    return next(s.as_dict() for s in connections.states() if s.record.name == name)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
