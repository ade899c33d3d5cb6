"""Connections: external backends we do not run. Their models are discovered, refreshed, and routable
as ``CONNECTION/MODEL``; an unreachable connection keeps its last known models listed but unavailable
(a clear 503), and they come back by themselves when it answers again.

A model of a connection is described (``show_model``) by its server: an Ollama server's own ``/api/show``,
or what an OpenAI-compatible or TGI server lists about it. When a user asks, the models *on* such a server
are managed through its own API (``pull``, ``copy``, ``delete`` on an Ollama server), and the connection's
model list is refreshed right after; a kind whose provider cannot do that (OpenAI-compatible, TGI) gets a
clear 400.

Options (``ConnectionRecord.options``): ``stream_usage`` (default true) — every stream asks the server
for its usage (``stream_options.include_usage``) so it can be metered; false for a server that rejects
that field (its streams are then metered by estimate).

Secrets: the API key and the secrets of the URL (user info, ``?api-key=…``: ``core.credentials``) are
stored encrypted; the registry's ``url`` is the public URL, and everything shown (admin API, CLI, events,
logs) has the redacted URL (``http://***@host/v1?api-key=***``). The decrypted credential of each
connection lives only in this process's ``CredentialStore``; endpoints (and so the routing snapshot) carry
its name. What a data-plane client may read of a failure (``Route.unavailable``, the errors of ``show``,
``pull``, ``copy``, ``delete``) names the connection and the kind of failure, never the server's address;
the admin API's ``error`` has the full reason, redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from superollama.control.credentials import CredentialStore
from superollama.control.routing import Route, RouteTarget
from superollama.control.secrets import SecretBox
from superollama.core import (
    ConnectionRecord,
    Credential,
    Endpoint,
    EventRecord,
    Provider,
    UrlSecrets,
    credential_for,
    redact_text,
    redacted_url,
    split_url,
)
from superollama.errors import InvalidRequest, NotFound, SuperOllamaError, UpstreamError
from superollama.providers.http import failure_kind
from superollama.registry import Registry

__all__ = ["OPTIONS", "ConnectionManager", "ConnectionState", "DescribesModels", "ManagesModels"]

log = logging.getLogger("superollama.connections")

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
OPTIONS: Mapping[str, type] = {"stream_usage": bool}  # a connection's options and their types


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


@dataclass
class ConnectionState:
    """A connection as this process knows it. ``error``: the last failure in full (redacted; admin
    only); ``failure``: the same, as a data-plane client may read it. ``url_shown``: the redacted URL.
    ``credential``: decrypted, in memory only (None: none, or ``unreadable`` says why)."""

    record: ConnectionRecord
    healthy: bool = False
    error: str | None = None
    failure: str | None = None
    models: list[str] = field(default_factory=list)
    checked_at: float | None = None
    url_shown: str = ""
    credential: Credential | None = field(default=None, repr=False)
    unreadable: str | None = None

    def as_dict(self) -> dict[str, object]:
        r = self.record
        return {
            "name": r.name,
            "kind": r.kind,
            "url": self.url_shown or r.url,
            "enabled": r.enabled,
            "api_key": "env" if (r.secret or "").startswith("env:") else ("stored" if r.secret else None),
            "options": dict(r.options),
            "stream_usage": _stream_usage(r),
            "healthy": self.healthy,
            "error": self.error,
            "models": list(self.models),
            "created_at": r.created_at.isoformat() if r.created_at else None,
        }


class ConnectionManager:
    def __init__(
        self,
        registry: Registry,
        providers: Mapping[str, Provider],
        secrets: SecretBox,
        *,
        refresh_interval: float = 30.0,
        credentials: CredentialStore | None = None,
    ) -> None:
        """``credentials``: the store the providers (and this process's data plane) resolve endpoints'
        credentials from; this manager keeps it in step with the connections."""
        self._registry = registry
        self._providers = dict(providers)
        self._secrets = secrets
        self.credentials = credentials if credentials is not None else CredentialStore()
        self._interval = refresh_interval
        self._states: dict[str, ConnectionState] = {}
        self._listeners: list[Callable[[], None]] = []
        self._event_listeners: list[Callable[[EventRecord], None]] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # pulls whose client went away finish anyway

    def on_event(self, listener: Callable[[EventRecord], None]) -> None:
        """Call ``listener`` with every event recorded here (e.g. connection unhealthy: an incident)."""
        self._event_listeners.append(listener)

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        for record in await self._registry.connections.list():
            self._states[record.name] = self._new_state(record)
        self._publish_credentials()
        await self.refresh()
        self._loop_task = asyncio.create_task(self._refresh_forever(), name="connections-refresh")

    async def close(self) -> None:
        tasks = [*self._background, *([self._loop_task] if self._loop_task is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- operations ------------------------------------------------------------------------------
    async def add(
        self,
        kind: str,
        url: str,
        *,
        name: str | None = None,
        api_key: str | None = None,
        options: Mapping[str, Any] | None = None,
        actor: str = "api",
    ) -> ConnectionState:
        provider = self._providers.get(kind)
        if provider is None:
            known = ", ".join(sorted(self._providers))
            raise InvalidRequest(f"unknown connection kind {kind!r} (known: {known})", param="kind")
        if not url.startswith(("http://", "https://")):
            raise InvalidRequest("the URL must start with http:// or https://", param="url")
        name = (name or kind).lower()
        if not name or not set(name) <= _NAME_CHARS or name[0] in "-_.":
            raise InvalidRequest(
                f"invalid connection name {name!r}: lower-case letters, digits, '-', '_' and '.'",
                param="name",
            )
        public, secrets = split_url(url)
        if secrets.userinfo is not None and api_key:
            raise InvalidRequest(
                "give the credential either in the URL (user:password@) or as an API key, not both",
                param="api_key",
            )
        record = ConnectionRecord(
            name=name,
            kind=kind,
            url=public.rstrip("/"),
            secret=self._secrets.seal(api_key),
            options=_checked_options(options or {}),
            url_secret=self._secrets.encrypt(json.dumps(secrets.to_json())) if secrets else None,
        )
        record = await self._registry.connections.add(record)
        state = self._states[name] = self._new_state(record)
        self._publish_credentials()
        await self._check(state)
        detail: dict[str, object] = {"kind": kind, "url": state.url_shown}
        if record.options:
            detail["options"] = dict(record.options)
        await self._event("connection.add", name, actor, "ok", detail)
        self._changed()
        return state

    async def remove(self, name: str, *, actor: str = "api") -> None:
        await self._registry.connections.delete(name)
        self._states.pop(name, None)
        self._publish_credentials()
        await self._event("connection.remove", name, actor, "ok", {})
        self._changed()

    async def set_enabled(self, name: str, enabled: bool, *, actor: str = "api") -> ConnectionState:
        record = await self._registry.connections.set_enabled(name, enabled)
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = self._new_state(record)
            self._publish_credentials()
        state.record = record
        await self._event("connection.enable" if enabled else "connection.disable", name, actor, "ok", {})
        self._changed()
        return state

    async def refresh(self, name: str | None = None) -> None:
        """Check one connection (``NotFound`` if there is none of that name) or all of them now."""
        states = [self._state(name)] if name is not None else list(self._states.values())
        await asyncio.gather(*(self._check(s) for s in states))
        self._changed()

    def get(self, name: str) -> ConnectionState:
        return self._state(name)

    def owner(self, model: str) -> tuple[str, str] | None:
        """``(connection, the server's name)`` for a model named ``CONNECTION/MODEL`` after a connection we
        have, else None (a local model's name)."""
        name, sep, rest = model.strip().partition("/")
        if sep and rest.strip() and name in self._states:
            return name, rest.strip()
        return None

    # -- models on the connected server ----------------------------------------------------------
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

    def states(self) -> list[ConnectionState]:
        return [self._states[k] for k in sorted(self._states)]

    def routes(self) -> list[Route]:
        """One route per discovered model of each enabled connection (no target while unhealthy)."""
        routes = []
        for state in self._states.values():
            record = state.record
            if not record.enabled:
                continue
            created = int(record.created_at.timestamp()) if record.created_at else 0
            for model in state.models:
                name = f"{record.name}/{model}"
                targets: tuple[RouteTarget, ...] = ()
                if state.healthy:
                    targets = (RouteTarget(f"conn:{name}", self._endpoint(state, model)),)
                routes.append(
                    Route(
                        name, name, True, created, targets, connection=record.name, unavailable=state.failure
                    )
                )
        return routes

    # -- internals -------------------------------------------------------------------------------
    def _state(self, name: str) -> ConnectionState:
        state = self._states.get(name)
        if state is None:
            raise NotFound(f"connection {name!r} not found", param="name")
        return state

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

    def _new_state(self, record: ConnectionRecord) -> ConnectionState:
        """The state of a connection read or added: its credential decrypted, its URL redacted."""
        state = ConnectionState(record, url_shown=record.url)
        try:
            stored = self._secrets.open(record.url_secret)
            secrets = UrlSecrets.from_json(json.loads(stored)) if stored else UrlSecrets()
            state.url_shown = redacted_url(record.url, secrets)
            credential = credential_for(secrets, self._secrets.open(record.secret))
        except SuperOllamaError as exc:
            state.unreadable = exc.message
            log.warning("connection %s: its stored credential cannot be read: %s", record.name, exc.message)
            return state
        if credential.headers or credential.query:
            state.credential = credential
        return state

    def _publish_credentials(self) -> None:
        self.credentials.replace(
            {name: s.credential for name, s in self._states.items() if s.credential is not None}
        )

    def _endpoint(self, state: ConnectionState, model: str) -> Endpoint:
        """How to reach the connection: its public URL and the name of its credential, never the secret."""
        record = state.record
        provider = self._providers[record.kind]
        return Endpoint(
            provider.relay_base(record.url),
            "openai",
            model,
            stream_usage=_stream_usage(record),
            credential=record.name if state.credential is not None else None,
        )

    async def _check(self, state: ConnectionState) -> None:
        record = state.record
        provider = self._providers.get(record.kind)
        first, was_healthy = state.checked_at is None, state.healthy
        unavailable = f"connection {record.name!r} is unavailable"
        try:
            if provider is None:
                raise InvalidRequest(f"no provider for kind {record.kind!r}")
            if state.unreadable is not None:
                raise InvalidRequest("its stored credential cannot be read (see the server's log)")
            state.models = sorted(await provider.models(self._endpoint(state, "")))
            state.healthy, state.error, state.failure = True, None, None
        except SuperOllamaError as exc:
            state.healthy = False
            state.error = redact_text(f"{unavailable}: {exc.message}")
            state.failure = f"{unavailable}: {failure_kind(exc)}"
        state.checked_at = time.time()
        if state.healthy != was_healthy:
            self._changed()  # routing follows before anything else can observe the new state
        if state.healthy and not was_healthy and not first:
            log.info("connection %s is healthy again (%d models)", record.name, len(state.models))
            await self._event(
                "connection.healthy", record.name, "system", "ok", {"models": len(state.models)}
            )
        elif not state.healthy and (was_healthy or first):
            log.warning("%s", state.error)
            await self._event("connection.unhealthy", record.name, "system", "failed", {"error": state.error})

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing connections failed")

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    async def _event(
        self, action: str, target: str, actor: str, result: str, detail: dict[str, object]
    ) -> None:
        event = EventRecord(action=action, target=target, actor=actor, result=result, detail=detail)
        for listener in self._event_listeners:
            listener(event)
        try:
            await self._registry.events.add(event)
        except SuperOllamaError:
            log.exception("could not record event %s %s", action, target)


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


def _stream_usage(record: ConnectionRecord) -> bool:
    return record.options.get("stream_usage") is not False


def _checked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise InvalidRequest("'options' must be an object", param="options")
    for key, value in options.items():
        kind = OPTIONS.get(key)
        if kind is None:
            known = ", ".join(sorted(OPTIONS))
            raise InvalidRequest(f"unknown connection option {key!r} (known: {known})", param="options")
        if not isinstance(value, kind):
            raise InvalidRequest(f"connection option {key!r} must be a {kind.__name__}", param="options")
    return dict(options)


async def _drain(queue: asyncio.Queue[dict[str, Any] | None]) -> AsyncIterator[dict[str, Any]]:
    while (item := await queue.get()) is not None:
        yield item
