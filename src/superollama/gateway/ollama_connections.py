"""The Ollama API's model management for a connection's models (``CONNECTION/MODEL``): ``/api/show``,
``/api/pull``, ``/api/copy`` and ``/api/delete`` are answered by that connection's server, through the
``ConnectionManager``, which refreshes the connection's models right after a change (routing sees it at once).

``show`` is the server's own description (an Ollama server's ``/api/show``; what an OpenAI-compatible or
TGI server lists), with its names made ours (``FROM llama3.2:1b`` → ``FROM box/llama3.2:1b``). Pull, copy
and delete work on Ollama servers only (others: a clear 400); a copy stays on its server, so both names
must be of the same connection. A model name is a connection's when it starts with the name of a
connection we have and a slash — unless a local model has exactly that name.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from superollama.control import ConnectionManager
from superollama.core.routing import RoutingHolder
from superollama.errors import InvalidRequest
from superollama.gateway.responses import json_response as _json
from superollama.wire import ollama as wire

__all__ = ["ConnectionModels"]

_NDJSON = {"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_FROM = re.compile(r"^(#[ \t]*)?(FROM[ \t]+)(\S+)[ \t]*$", re.MULTILINE)


class ConnectionModels:
    def __init__(self, connections: ConnectionManager | None, holder: RoutingHolder) -> None:
        self._connections = connections
        self._holder = holder

    def owner(self, name: str) -> str | None:
        """The connection model ``name`` belongs to, or None for a local model's name."""
        if self._connections is None:
            return None
        found = self._connections.owner(name)
        if found is None:
            return None
        route = self._holder.table.lookup(name)
        if route is not None and route.connection is None:
            return None  # a local model has exactly this name
        return found[0]

    def _manager(self) -> ConnectionManager:
        assert self._connections is not None  # owner() found a connection
        return self._connections

    async def show(self, connection: str, name: str) -> web.Response:
        described = await self._manager().show_model(connection, name)
        route = self._holder.table.lookup(name)
        created = route.created if route is not None and route.created else None
        return _json(ours(described, connection, created))

    async def pull(
        self, request: web.Request, connection: str, name: str, stream: bool
    ) -> web.StreamResponse:
        """Pull onto the connection's server: its progress lines as Ollama streams them, then
        ``{"status": "success"}`` once the connection's models are refreshed (or ``{"error": ...}``)."""
        manager = self._manager()
        if not stream:
            await manager.pull_model(connection, name, actor="api")
            return _json({"status": "success"})
        events = manager.pull_model_stream(connection, name, actor="api")  # refusals raise here
        response = web.StreamResponse(headers=_NDJSON)
        await response.prepare(request)
        async for line in _ollama_lines(events):
            await response.write(orjson.dumps(line) + b"\n")
        await response.write_eof()
        return response

    async def copy(self, source: str, destination: str) -> web.Response:
        manager = self._manager()
        connection, target = self.owner(source), manager.owner(destination)
        if connection is None:
            assert target is not None
            raise InvalidRequest(
                f"cannot copy local model {source!r} onto connection {target[0]!r}: a copy stays where its "
                "source is (copy it under a name of no connection)",
                param="destination",
            )
        manager.manageable(connection, "copy")
        if target is None or target[0] != connection:
            where = f"connection {target[0]!r}" if target is not None else "this gateway's own models"
            raise InvalidRequest(
                f"cannot copy {source!r} to {where}: a model of connection {connection!r} is copied on its "
                f"server, so the destination must be named '{connection}/NEW-NAME'",
                param="destination",
            )
        await manager.copy_model(connection, source, destination, actor="api")
        return web.Response(status=200)

    async def delete(self, connection: str, name: str) -> web.Response:
        await self._manager().delete_model(connection, name, actor="api")
        return web.Response(status=200)


def ours(show: Mapping[str, Any], connection: str, created: int | None = None) -> dict[str, Any]:
    """A server's ``/api/show`` answer with its model names made ours (``CONNECTION/NAME``) where they
    appear: the Modelfile's ``FROM`` lines that name a model (not a file), ``details.parent_model``."""
    out = dict(show)
    modelfile = out.get("modelfile")
    if isinstance(modelfile, str):
        out["modelfile"] = _FROM.sub(lambda m: _from_line(m, connection), modelfile)
    details = out.get("details")
    if isinstance(details, Mapping):
        parent = details.get("parent_model")
        if isinstance(parent, str) and parent and not _is_path(parent):
            out["details"] = {**details, "parent_model": f"{connection}/{parent}"}
    out.setdefault("model_info", None)  # the ollama client requires the key
    if not out.get("modified_at"):
        when = datetime.fromtimestamp(created, UTC) if created else datetime.now(UTC)
        out["modified_at"] = wire.rfc3339(when)
    return out


def _from_line(match: re.Match[str], connection: str) -> str:
    comment, keyword, name = match.group(1) or "", match.group(2), match.group(3)
    if _is_path(name):
        return match.group(0)
    return f"{comment}{keyword}{connection}/{name}"


def _is_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", "\\")) or ":\\" in name or "sha256" in name


async def _ollama_lines(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """The manager's pull events as Ollama's NDJSON: the server's progress as it is (its own "success"
    held back: ours comes once routing knows the model), then ``{"status": "success"}`` or
    ``{"error": message}``."""
    async for event in events:
        status = event.get("status")
        if status == "error":
            error = event.get("error")
            message = error.get("message") if isinstance(error, Mapping) else error
            yield {"error": str(message or "pull failed")}
        elif status == "success":
            if "connection" in event:  # ours, after the refresh
                yield {"status": "success"}
        else:
            yield event
