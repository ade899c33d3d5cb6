"""``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/pull``, ``/api/copy``, ``/api/delete``: Ollama's model
management, on the control plane's catalog (``Controller``) like the admin API.

For a connection's model (``CONNECTION/MODEL``) show, pull, copy and delete are answered by its server
(``ollama_connections``). A key limited to some models sees only those: ``/api/show`` answers any other
name as missing before the catalog or a connection is asked, and ``/api/tags`` and ``/api/ps`` list only
its models. Pull, copy and delete change the catalog: with keys in use they need an admin key.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from superollama.control import Controller
from superollama.core import Progress
from superollama.errors import InvalidRequest, ModelNotFound, SuperOllamaError
from superollama.gateway.exchange import exchange_of, principal_of
from superollama.gateway.ollama_connections import ConnectionModels
from superollama.gateway.openai_routes import ModelTargets, read_json
from superollama.gateway.responses import json_response as _json
from superollama.gateway.seams import InstanceAccounting
from superollama.wire import ollama as wire

__all__ = ["MISSING", "NDJSON", "OllamaModels", "ndjson_line"]

NDJSON = {"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MISSING = "model '{name}' not found"  # Ollama's words; a model outside the key's scope gets them too


def ndjson_line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


class OllamaModels:
    def __init__(
        self,
        targets: ModelTargets,
        controller: Controller,
        agent: InstanceAccounting,
        remote: ConnectionModels,
    ) -> None:
        self._targets = targets
        self._controller = controller
        self._agent = agent
        self._remote = remote
        self._background: set[asyncio.Task[None]] = set()  # pulls whose client went away finish anyway

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/tags", self.tags)
        r.add_get("/api/ps", self.ps)
        r.add_post("/api/show", self.show)
        r.add_post("/api/pull", self.pull)
        r.add_post("/api/copy", self.copy)
        r.add_delete("/api/delete", self.delete)

    async def tags(self, request: web.Request) -> web.Response:
        routes = self._targets.visible(request)
        visible = {r.name for r in routes}
        versions = [v for v in await self._controller.list_versions(enabled=True) if v.name in visible]
        models = [wire.tag_entry(v) for v in versions]
        models += [wire.connection_tag_entry(r.name, r.created) for r in routes if r.connection is not None]
        models += [
            wire.connection_tag_entry(d.name, d.created) for d in self._targets.visible_deployments(request)
        ]
        return _json({"models": sorted(models, key=lambda m: str(m["name"]))})

    async def ps(self, request: web.Request) -> web.Response:
        """The loaded models the caller may see."""
        principal = principal_of(request)
        versions = {v.name: v for v in await self._controller.list_versions()}
        now, models, seen = datetime.now(UTC), [], set()
        for inst in self._controller.instances():
            if inst.version in seen:  # a model loaded as several replicas is one loaded model here
                continue
            seen.add(inst.version)
            left = self._agent.expires_in(inst.version)
            visible = self._targets.security.may_see(principal, inst.version)
            if inst.version in versions and left is not None and visible:
                models.append(wire.ps_entry(versions[inst.version], wire.expires_at(now, left)))
        return _json({"models": models})

    async def show(self, request: web.Request) -> web.Response:
        name = wire.model_name(await read_json(request))
        principal = principal_of(request)
        dep = self._targets.holder.table.deployment(name)
        if dep is not None:  # a deployment shows as the version most of its traffic goes to
            if not self._targets.security.may_see(principal, dep.name) or not dep.choices:
                raise ModelNotFound(MISSING.format(name=name), param="model")
            principal, name = None, max(dep.choices, key=lambda c: dep.weight_of(c.name)).name
        if principal is not None and principal.scoped and self._targets.find(principal, name) is None:
            # a key limited to some models: any other name is answered as missing, without asking
            # the catalog or a connection's server (whose answers would tell the two apart)
            raise ModelNotFound(MISSING.format(name=name), param="model")
        if (connection := self._remote.owner(name)) is not None:
            return await self._remote.show(connection, name)
        details = await self._controller.show(name)
        route = self._targets.holder.table.lookup(details.version.name)
        capabilities = route.capabilities if route is not None else ("completion",)
        return _json(wire.show_response(details.version, capabilities))

    async def pull(self, request: web.Request) -> web.StreamResponse:
        """Pull by source (a ``file://`` URI or a local path; other schemes as the store knows them)."""
        self._require_admin(request)
        body = await read_json(request)
        source = wire.model_name(body)
        if (connection := self._remote.owner(source)) is not None:
            return await self._remote.pull(request, connection, source, wire.is_stream(body))
        if not wire.is_stream(body):
            await self._controller.pull(source, actor="api")
            return _json({"status": "success"})
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        task = asyncio.create_task(self._pull_into(queue, source))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        response = web.StreamResponse(headers=NDJSON)
        await response.prepare(request)
        while (item := await queue.get()) is not None:
            await response.write(ndjson_line(item))
        await response.write_eof()
        return response

    async def _pull_into(self, queue: asyncio.Queue[dict[str, Any] | None], source: str) -> None:
        def progress(p: Progress) -> None:
            if p.status != "success":  # the one final line below says success
                queue.put_nowait(p.as_dict())

        try:
            await self._controller.pull(source, on_progress=progress, actor="api")
            queue.put_nowait({"status": "success"})
        except SuperOllamaError as exc:
            queue.put_nowait({"error": exc.message})
        finally:
            queue.put_nowait(None)

    async def copy(self, request: web.Request) -> web.Response:
        self._require_admin(request)
        body = await read_json(request)
        source, destination = body.get("source"), body.get("destination")
        for key, value in (("source", source), ("destination", destination)):
            if not isinstance(value, str) or not value.strip():
                raise InvalidRequest(f"{key} is required")
        if self._remote.owner(str(source)) or self._remote.owner(str(destination)):
            return await self._remote.copy(str(source), str(destination))
        await self._controller.copy(str(source), str(destination), actor="api")
        return web.Response(status=200)

    async def delete(self, request: web.Request) -> web.Response:
        self._require_admin(request)
        name = wire.model_name(await read_json(request))
        if (connection := self._remote.owner(name)) is not None:
            return await self._remote.delete(connection, name)
        await self._controller.remove(name, force=True, actor="api")
        return web.Response(status=200)

    def _require_admin(self, request: web.Request) -> None:
        """Pull, copy and delete change the catalog: with keys in use they need an admin key."""
        ex = exchange_of(request)
        self._targets.security.require_admin(ex.principal if ex is not None else None)
