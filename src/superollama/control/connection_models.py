"""The models *on* a connected server, managed through its own API: ``show``, ``pull``, ``copy``, ``delete``.

A capability of the connection's provider, not a ``kind ==`` switch: an Ollama server's provider
``DescribesModels`` and ``ManagesModels``; an OpenAI-compatible or TGI provider does neither, and asking
gets a clear 400 that says which kinds can. After each operation the connection's model list is refreshed
(after a failure too: a pull may have left a model, and the server may have gone away) and an event is
recorded. What a client reads of a failure names the connection and the kind of failure, never the
server's address.

``RemoteModels`` is the part of ``ConnectionManager`` that does this; it relies on the manager for the
connection's state, endpoint, health check and events (declared below).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from superollama.core import Endpoint, Provider, redact_text
from superollama.errors import InvalidRequest, SuperOllamaError, UpstreamError
from superollama.providers.http import failure_kind

if TYPE_CHECKING:
    from superollama.control.connections import ConnectionState

__all__ = ["DescribesModels", "ManagesModels", "RemoteModels"]

log = logging.getLogger("superollama.connections")


@runtime_checkable
class DescribesModels(Protocol):
    """A provider that can describe one of its server's models."""

    async def show(self, ep: Endpoint, model: str) -> dict[str, Any]:
        """``model`` (the server's own name) in Ollama's ``/api/show`` shape; ``NotFound`` if the server
        has no such model."""
        ...


@runtime_checkable
class ManagesModels(Protocol):
    """A provider that can change the models on its server through that server's API (Ollama)."""

    def pull(self, ep: Endpoint, model: str) -> AsyncIterator[dict[str, Any]]:
        """Pull ``model`` onto the server; yields its progress objects; raises on failure."""
        ...

    async def copy(self, ep: Endpoint, source: str, destination: str) -> None: ...

    async def delete(self, ep: Endpoint, model: str) -> None: ...


class RemoteModels:
    """Managing the models on connected servers; mixed into ``ConnectionManager``."""

    _providers: dict[str, Provider]
    _background: set[asyncio.Task[None]]

    # provided by ConnectionManager:
    _state: Callable[[str], ConnectionState]
    _endpoint: Callable[[ConnectionState, str], Endpoint]
    _check: Callable[[ConnectionState], Awaitable[None]]
    _changed: Callable[[], None]
    _event: Callable[[str, str, str, str, dict[str, object]], Awaitable[None]]

    async def show_model(self, name: str, model: str) -> dict[str, Any]:
        """Model ``model`` of connection ``name`` described by its server, in Ollama's ``/api/show``
        shape. ``NotFound`` when the server has no such model; 503 when it cannot be reached."""
        state = self._state(name)
        provider = self._providers.get(state.record.kind)
        if not isinstance(provider, DescribesModels):
            raise InvalidRequest(f"connection {name!r} ({state.record.kind}) cannot describe its models")
        try:
            return await provider.show(self._endpoint(state, ""), _local_name(name, model, "model"))
        except SuperOllamaError as exc:
            raise _on_connection(exc, name) from exc

    def manageable(self, name: str, action: str) -> None:
        """Raise unless connection ``name`` exists and its kind can ``action`` (pull, copy, delete) models
        through its server's API: ``NotFound``, or a 400 that says which kinds can."""
        state = self._state(name)
        if not isinstance(self._providers.get(state.record.kind), ManagesModels):
            can = sorted(k for k, p in self._providers.items() if isinstance(p, ManagesModels))
            raise InvalidRequest(
                f"connection {name!r} is a {state.record.kind} server: it cannot {action} models through "
                f"its API (only {', '.join(can) or 'no'} connections can)",
                param="name",
            )

    async def pull_model(
        self,
        name: str,
        model: str,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        actor: str = "api",
    ) -> ConnectionState:
        """Pull ``model`` onto connection ``name``'s server (its progress objects go to ``on_progress``);
        the connection's models are refreshed afterwards."""
        self.manageable(name, "pull")
        model = _local_name(name, model, "model")

        async def work(provider: ManagesModels, ep: Endpoint) -> None:
            async for event in provider.pull(ep, model):
                if on_progress is not None:
                    on_progress(event)

        return await self._manage(name, "pull", {"model": model}, actor, work)

    def pull_model_stream(
        self, name: str, model: str, *, actor: str = "api"
    ) -> AsyncIterator[dict[str, Any]]:
        """``pull_model`` as NDJSON-ready events: the server's progress, then ``{"status": "success",
        "model", "connection"}`` or ``{"status": "error", "error": {...}}``. Refusals (unknown connection,
        a kind that cannot pull) raise here, before any event. The pull runs as a task of this manager, so
        it finishes even when the consumer stops reading."""
        self.manageable(name, "pull")
        local = _local_name(name, model, "model")
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def run() -> None:
            try:
                state = await self.pull_model(name, local, on_progress=queue.put_nowait, actor=actor)
                queue.put_nowait(
                    {"status": "success", "model": f"{name}/{local}", "connection": state.as_dict()}
                )
            except SuperOllamaError as exc:
                error = {"message": exc.message, "type": exc.type, "code": exc.code}
                queue.put_nowait({"status": "error", "error": error})
            except Exception as exc:
                log.exception("pulling %s on connection %s failed", local, name)
                error = {"message": f"internal error: {type(exc).__name__}", "type": "internal_error"}
                queue.put_nowait({"status": "error", "error": error})
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(run(), name=f"connection-pull-{name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return _drain(queue)

    async def copy_model(
        self, name: str, source: str, destination: str, *, actor: str = "api"
    ) -> ConnectionState:
        """Copy ``source`` to ``destination`` on connection ``name``'s server; refresh its models."""
        self.manageable(name, "copy")
        source = _local_name(name, source, "source")
        destination = _local_name(name, destination, "destination")

        async def work(provider: ManagesModels, ep: Endpoint) -> None:
            await provider.copy(ep, source, destination)

        detail = {"source": source, "destination": destination}
        return await self._manage(name, "copy", detail, actor, work)

    async def delete_model(self, name: str, model: str, *, actor: str = "api") -> ConnectionState:
        """Delete ``model`` from connection ``name``'s server; refresh its models."""
        self.manageable(name, "delete")
        model = _local_name(name, model, "model")

        async def work(provider: ManagesModels, ep: Endpoint) -> None:
            await provider.delete(ep, model)

        return await self._manage(name, "delete", {"model": model}, actor, work)

    async def _manage(
        self,
        name: str,
        action: str,
        detail: Mapping[str, object],
        actor: str,
        work: Callable[[ManagesModels, Endpoint], Awaitable[None]],
    ) -> ConnectionState:
        """Run ``work`` against the connection's server; record the event; refresh its models (after a
        failure too: a pull may have left a model, and the server may have gone away)."""
        state = self._state(name)
        provider = self._providers[state.record.kind]
        assert isinstance(provider, ManagesModels)
        try:
            await work(provider, self._endpoint(state, ""))
        except SuperOllamaError as exc:
            error = redact_text(exc.message)
            await self._event(f"connection.{action}", name, actor, "failed", {**detail, "error": error})
            await self._check(state)
            self._changed()
            raise _on_connection(exc, name) from exc
        await self._check(state)
        self._changed()
        await self._event(f"connection.{action}", name, actor, "ok", dict(detail))
        log.info("connection %s: %s %s", name, action, detail)
        return state


def _local_name(connection: str, model: object, param: str) -> str:
    """The server's own name for a model given as ``MODEL`` or as its route ``CONNECTION/MODEL``."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest(f"'{param}' must be a non-empty model name", param=param)
    model = model.strip()
    prefix = f"{connection}/"
    if model.startswith(prefix) and len(model) > len(prefix):
        model = model[len(prefix) :]
    return model


def _on_connection(exc: SuperOllamaError, name: str) -> SuperOllamaError:
    """The same error, its message saying which connection answered it (or could not be reached, and
    how: never where the server is)."""
    if isinstance(exc, UpstreamError) and exc.status == 503:  # not reached, not an answer
        message = f"connection {name!r} is unavailable: {failure_kind(exc)}"
    else:
        message = f"connection {name!r}: {redact_text(exc.message)}"
    new = type(exc)(message, param=exc.param, retry_after=exc.retry_after)
    new.status = exc.status
    return new


async def _drain(queue: asyncio.Queue[dict[str, Any] | None]) -> AsyncIterator[dict[str, Any]]:
    while (item := await queue.get()) is not None:
        yield item
