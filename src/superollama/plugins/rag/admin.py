"""Admin API for grounded chat: ``/admin/v1/grounding`` (list), ``/admin/v1/grounding/{name}`` (show,
``PUT`` to set: ``vector_store_ids``, ``top_k``, ``score_threshold``, ``template``; ``DELETE``)."""

from __future__ import annotations

from aiohttp import web

from superollama.admin.routes import PREFIX
from superollama.errors import NotFound
from superollama.gateway import read_json
from superollama.gateway.responses import json_response as _json
from superollama.plugins.rag.grounding import Grounding, grounding_json

__all__ = ["GroundingRoutes"]


class GroundingRoutes:
    def __init__(self, grounding: Grounding) -> None:
        self._grounding = grounding

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get(f"{PREFIX}/grounding", self.list)
        r.add_get(f"{PREFIX}/grounding/{{name:.+}}", self.show)
        r.add_put(f"{PREFIX}/grounding/{{name:.+}}", self.put)
        r.add_delete(f"{PREFIX}/grounding/{{name:.+}}", self.remove)

    async def list(self, _request: web.Request) -> web.Response:
        return _json({"grounding": [grounding_json(g) for g in self._grounding.all()]})

    async def show(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        for g in self._grounding.all():
            if g.name == name:
                return _json(grounding_json(g))
        raise NotFound(f"no grounding for {name!r}", param="name")

    async def put(self, request: web.Request) -> web.Response:
        record = await self._grounding.put(request.match_info["name"], await read_json(request))
        return _json(grounding_json(record))

    async def remove(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self._grounding.remove(name)
        return _json({"deleted": name})
