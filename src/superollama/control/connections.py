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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from superollama.control.connection_models import RemoteModels
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
from superollama.errors import InvalidRequest, NotFound, SuperOllamaError
from superollama.providers.http import failure_kind
from superollama.registry import Registry

__all__ = ["OPTIONS", "ConnectionManager", "ConnectionState"]

log = logging.getLogger("superollama.connections")

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
OPTIONS: Mapping[str, type] = {"stream_usage": bool}  # a connection's options and their types


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


class ConnectionManager(RemoteModels):
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

    async def reload(self) -> None:
        """Read the connections from the registry again (the change feed calls this after a connection was
        added, removed or changed through another gateway): new ones are read and checked, removed ones
        leave routing, changed ones are read again; credentials follow before the routes."""
        records = {r.name: r for r in await self._registry.connections.list()}
        fresh: list[ConnectionState] = []
        for name in list(self._states):
            if name not in records:
                del self._states[name]
        for name, record in records.items():
            state = self._states.get(name)
            if state is not None and state.record == record:
                continue
            if state is not None and _same_source(state.record, record):
                state.record = record  # enabled or disabled: same endpoint, same credential
                continue
            state = self._states[name] = self._new_state(record)
            fresh.append(state)
        self._publish_credentials()
        await asyncio.gather(*(self._check(s) for s in fresh))
        self._changed()

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
            server_kind=record.kind,
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


def _same_source(old: ConnectionRecord, new: ConnectionRecord) -> bool:
    """Whether two records of a connection reach the same server the same way (only ``enabled`` or the
    times differ): its checked state can be kept."""
    return (old.kind, old.url, old.secret, old.url_secret, dict(old.options)) == (
        new.kind,
        new.url,
        new.secret,
        new.url_secret,
        dict(new.options),
    )


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
