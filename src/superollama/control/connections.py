"""Connections: external backends we do not run. Their models are discovered, refreshed, and routable
as ``CONNECTION/MODEL``; an unreachable connection keeps its last known models listed but unavailable
(a clear 503), and they come back by themselves when it answers again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from superollama.control.routing import Route, RouteTarget
from superollama.control.secrets import SecretBox
from superollama.core import ConnectionRecord, Endpoint, EventRecord, Provider
from superollama.errors import InvalidRequest, SuperOllamaError
from superollama.registry import Registry

__all__ = ["ConnectionManager", "ConnectionState"]

log = logging.getLogger("superollama.connections")

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass
class ConnectionState:
    record: ConnectionRecord
    healthy: bool = False
    error: str | None = None
    models: list[str] = field(default_factory=list)
    checked_at: float | None = None

    def as_dict(self) -> dict[str, object]:
        r = self.record
        return {
            "name": r.name,
            "kind": r.kind,
            "url": r.url,
            "enabled": r.enabled,
            "api_key": "env" if (r.secret or "").startswith("env:") else ("stored" if r.secret else None),
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
    ) -> None:
        self._registry = registry
        self._providers = dict(providers)
        self._secrets = secrets
        self._interval = refresh_interval
        self._states: dict[str, ConnectionState] = {}
        self._listeners: list[Callable[[], None]] = []
        self._event_listeners: list[Callable[[EventRecord], None]] = []
        self._loop_task: asyncio.Task[None] | None = None

    def on_event(self, listener: Callable[[EventRecord], None]) -> None:
        """Call ``listener`` with every event recorded here (e.g. connection unhealthy: an incident)."""
        self._event_listeners.append(listener)

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        for record in await self._registry.connections.list():
            self._states[record.name] = ConnectionState(record)
        await self.refresh()
        self._loop_task = asyncio.create_task(self._refresh_forever(), name="connections-refresh")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    # -- operations ------------------------------------------------------------------------------
    async def add(
        self, kind: str, url: str, *, name: str | None = None, api_key: str | None = None, actor: str = "api"
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
        record = ConnectionRecord(
            name=name, kind=kind, url=url.rstrip("/"), secret=self._secrets.seal(api_key)
        )
        record = await self._registry.connections.add(record)
        state = self._states[name] = ConnectionState(record)
        await self._check(state)
        await self._event("connection.add", name, actor, "ok", {"kind": kind, "url": record.url})
        self._changed()
        return state

    async def remove(self, name: str, *, actor: str = "api") -> None:
        await self._registry.connections.delete(name)
        self._states.pop(name, None)
        await self._event("connection.remove", name, actor, "ok", {})
        self._changed()

    async def set_enabled(self, name: str, enabled: bool, *, actor: str = "api") -> ConnectionState:
        record = await self._registry.connections.set_enabled(name, enabled)
        state = self._states.setdefault(name, ConnectionState(record))
        state.record = record
        await self._event("connection.enable" if enabled else "connection.disable", name, actor, "ok", {})
        self._changed()
        return state

    async def refresh(self, name: str | None = None) -> None:
        states = (
            [self._states[name]] if name is not None and name in self._states else list(self._states.values())
        )
        if name is not None and not states:
            await self._registry.connections.get(name)  # raises NotFound
        await asyncio.gather(*(self._check(s) for s in states))
        self._changed()

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
                    targets = (RouteTarget(f"conn:{name}", self._endpoint(record, model)),)
                routes.append(
                    Route(name, name, True, created, targets, connection=record.name, unavailable=state.error)
                )
        return routes

    # -- internals -------------------------------------------------------------------------------
    def _endpoint(self, record: ConnectionRecord, model: str) -> Endpoint:
        provider = self._providers[record.kind]
        headers: tuple[tuple[str, str], ...] = ()
        key = self._secrets.open(record.secret)
        if key:
            headers = (("Authorization", f"Bearer {key}"),)
        return Endpoint(provider.relay_base(record.url), "openai", model, headers)

    async def _check(self, state: ConnectionState) -> None:
        record = state.record
        provider = self._providers.get(record.kind)
        first, was_healthy = state.checked_at is None, state.healthy
        try:
            if provider is None:
                raise InvalidRequest(f"no provider for kind {record.kind!r}")
            state.models = sorted(await provider.models(self._endpoint(record, "")))
            state.healthy, state.error = True, None
        except SuperOllamaError as exc:
            state.healthy, state.error = False, f"connection {record.name!r} is unavailable: {exc.message}"
        state.checked_at = time.time()
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
