"""``GET /openapi.json`` and ``GET /docs``: both rendered from the declarations on the first request for
either, then kept; a server nobody asks for its document does not hold it (about 1.5 MB)."""

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
        self._operations = tuple(operations)
        self._version = version
        self._rendered: tuple[bytes, str] | None = None

    def register(self, app: web.Application) -> None:
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_get("/docs", self.docs)

    def rendered(self) -> tuple[bytes, str]:
        """The document as JSON and the docs page, rendered now if no request asked before."""
        if self._rendered is None:
            document = openapi_document(self._operations, self._version)
            self._rendered = orjson.dumps(document), render_docs(document)
        return self._rendered

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.rendered()[0], content_type="application/json")

    async def docs(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.rendered()[1], content_type="text/html")
