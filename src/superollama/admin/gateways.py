"""Admin API for the gateways sharing this registry: ``GET /admin/v1/gateways``.

Answers which gateway answered (``gateway``), the reconciler leader, the registry's generation, and every
gateway with its heartbeat, whether it is alive and the generation it has applied (a gateway behind the
registry's generation is catching up, or not hearing the change feed). ``superollama status`` prints it.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from superollama.admin.routes import PREFIX
from superollama.control import Cluster

__all__ = ["GatewayRoutes"]


class GatewayRoutes:
    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def register(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/gateways", self.gateways)

    async def gateways(self, _request: web.Request) -> web.Response:
        body = await self._cluster.status()
        return web.Response(body=orjson.dumps(body), content_type="application/json")
