"""``GET /openapi.json`` and ``GET /docs``: both rendered once, at registration, from the declarations."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from aiohttp import web

from superollama.contract.docs_page import render_docs
from superollama.contract.document import openapi_document
from superollama.contract.model import Operation

__all__ = ["ContractRoutes"]


class ContractRoutes:
    def __init__(self, operations: Iterable[Operation], version: str) -> None:
        document = openapi_document(operations, version)
        self._json = orjson.dumps(document)
        self._html = render_docs(document)

    def register(self, app: web.Application) -> None:
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_get("/docs", self.docs)

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._json, content_type="application/json")

    async def docs(self, _request: web.Request) -> web.Response:
        return web.Response(text=self._html, content_type="text/html")
