"""The admin API (``/admin/v1``): everything the CLI and the UI do goes through these routes."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from aiohttp import web

from superollama.admin.serialize import details_json, event_json, instance_json, root_json, version_json
from superollama.control import Controller
from superollama.errors import InvalidRequest
from superollama.gateway import read_json
from superollama.gateway.responses import json_response as _json
from superollama.security import bearer_key
from superollama.security.sessions import COOKIE as SESSION_COOKIE

__all__ = ["PREFIX", "AdminRoutes", "actor_of"]

PREFIX = "/admin/v1"


class AdminRoutes:
    def __init__(self, controller: Controller, node: str) -> None:
        self._controller = controller
        self._node = node

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get(f"{PREFIX}/models", self.list_models)
        r.add_get(f"{PREFIX}/instances", self.instances)
        r.add_post(f"{PREFIX}/instances/move", self.move_instance)
        r.add_get(f"{PREFIX}/events", self.events)
        r.add_get(f"{PREFIX}/storage", self.storage)
        r.add_post(f"{PREFIX}/copy", self.copy)
        r.add_post(f"{PREFIX}/rename", self.rename)
        r.add_post(f"{PREFIX}/models/{{name:.+}}/enable", self.enable)
        r.add_post(f"{PREFIX}/models/{{name:.+}}/disable", self.disable)
        r.add_post(f"{PREFIX}/models/{{name:.+}}/unload", self.unload)
        r.add_get(f"{PREFIX}/models/{{name:.+}}", self.show)
        r.add_delete(f"{PREFIX}/models/{{name:.+}}", self.remove)

    async def list_models(self, request: web.Request) -> web.Response:
        q = request.query
        enabled = _flag(q.get("enabled"))
        versions = await self._controller.list_versions(enabled=enabled, fmt=q.get("format"))
        return _json({"models": [version_json(v) for v in versions]})

    async def show(self, request: web.Request) -> web.Response:
        details = await self._controller.show(request.match_info["name"])
        return _json(details_json(details, self._node))

    async def remove(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        cut = await self._controller.remove(
            name, force=_flag(request.query.get("force")) is True, actor=actor_of(request)
        )
        return _json({"deleted": name, "cut": cut})

    async def enable(self, request: web.Request) -> web.Response:
        record = await self._controller.set_enabled(request.match_info["name"], True, actor=actor_of(request))
        return _json(version_json(record))

    async def disable(self, request: web.Request) -> web.Response:
        record = await self._controller.set_enabled(
            request.match_info["name"], False, actor=actor_of(request)
        )
        return _json(version_json(record))

    async def unload(self, request: web.Request) -> web.Response:
        stopped = await self._controller.unload(request.match_info["name"], actor=actor_of(request))
        return _json({"unloaded": stopped})

    async def copy(self, request: web.Request) -> web.Response:
        source, destination = await _pair(request)
        runtime = (await read_json(request)).get("runtime")
        if runtime is not None and (not isinstance(runtime, str) or not runtime):
            raise InvalidRequest("'runtime' must be a runtime's name", param="runtime")
        record = await self._controller.copy(source, destination, actor=actor_of(request), runtime=runtime)
        return _json(version_json(record), status=201)

    async def rename(self, request: web.Request) -> web.Response:
        source, destination = await _pair(request)
        record = await self._controller.rename(source, destination, actor=actor_of(request))
        return _json(version_json(record))

    async def instances(self, request: web.Request) -> web.Response:
        return _json({"instances": [instance_json(i, self._node) for i in self._controller.instances()]})

    async def move_instance(self, request: web.Request) -> web.Response:
        """Move a running instance of a version to another node (a cluster's): ready there before the
        old one drains and stops (``cluster/moves.py``)."""
        body = await read_json(request)
        name, node, instance = body.get("name"), body.get("node"), body.get("instance")
        for key, value in (("name", name), ("node", node)):
            if not isinstance(value, str) or not value:
                raise InvalidRequest(f"'{key}' is required", param=key)
        if instance is not None and not isinstance(instance, str):
            raise InvalidRequest("'instance' is an instance id", param="instance")
        moved = await self._controller.move_to_node(
            str(name), str(node), instance=instance, actor=actor_of(request)
        )
        return _json(moved)

    async def storage(self, request: web.Request) -> web.Response:
        """The storage roots a version's files may live in (``mv --to``), each checked now, with its
        disk's free and total bytes and the versions it holds."""
        roots = []
        for root, versions in await self._controller.storage():
            disk = await asyncio.to_thread(root.disk) if root.usable else None
            roots.append(root_json(root, versions, disk))
        return _json({"roots": roots})

    async def events(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise InvalidRequest("'limit' must be an integer", param="limit") from None
        since = _since(q.get("since"))
        events = await self._controller.events(
            limit=limit, since=since, target=q.get("target"), action=q.get("action")
        )
        return _json({"events": [event_json(e) for e in events]})


async def _pair(request: web.Request) -> tuple[str, str]:
    body = await read_json(request)
    source, destination = body.get("source"), body.get("destination")
    for key, value in (("source", source), ("destination", destination)):
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"'{key}' is required", param=key)
    return str(source), str(destination)


def _flag(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.lower() in ("1", "true", "yes", "on")


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    with contextlib.suppress(ValueError, KeyError):
        return datetime.now(UTC) - timedelta(seconds=float(value[:-1]) * units[value[-1]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest("'since' must be like 24h, 30m, 7d or an ISO timestamp", param="since") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def actor_of(request: web.Request) -> str:
    """Who made a change, for its event: the CLI, the web UI (a session, no key sent) or the API."""
    agent = request.headers.get("User-Agent", "")
    if agent.startswith("superollama-cli"):
        return "cli"
    if request.cookies.get(SESSION_COOKIE) and bearer_key(request.headers) is None:
        return "ui"
    return "api"
