"""``GET /admin/v1/plugins``: the plugins this server loaded (name, version, hooks) and those that failed,
each with its error — what ``superollama plugins`` prints for the local install."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from superollama.admin.routes import PREFIX
from superollama.gateway.responses import json_response

__all__ = ["PluginRoutes"]


class PluginRoutes:
    def __init__(self, report: Callable[[], list[dict[str, Any]]]) -> None:
        self._report = report

    def register(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/plugins", self.list_plugins)

    async def list_plugins(self, _request: web.Request) -> web.Response:
        return json_response({"object": "list", "data": self._report()})
