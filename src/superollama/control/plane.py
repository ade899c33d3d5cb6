"""The one seam every gateway process uses to reach the control plane: ``ControlPlaneClient``.

A gateway process (a whole ``serve``, or one worker of ``serve --workers N``) serves requests from an
in-memory routing snapshot and needs four things from the control plane, whatever its shape:

- **ensure a model is ready** (scale from zero) and a replacement for an instance that failed a request;
- **watch routing snapshots**: ``holder`` is swapped whenever the routes change, and ``credentials`` holds
  the upstream credentials those routes name (updated before the snapshot that may name them);
- **watch key changes**: ``on_keys_changed`` listeners run after API keys were created, revoked or rotated
  anywhere, so the process reloads its key cache;
- **report in-flight counts** (``acquire``/``release``, hot path, no I/O), keep-alive and unload.

Implementations, one design on every scale:

- ``LocalControlPlane`` (here): in the process that runs the controller (a single ``serve``, or the
  primary worker) and drives the node agent through ``NodeAgent`` (in process, or the agent process of
  ``serve --workers N`` through ``workers.remote_agent``). Changes made through *other* gateways on
  the same registry reach it through the change feed (``control/feed.py``), which reloads the catalog,
  connections, deployments and keys;
- ``workers.link.PrimaryLink``: a replica worker's link to its primary over a Unix socket, which relays
  the primary's snapshots, credentials and key changes, and its own counts back.

The gateway's ``InstanceStarter`` and ``InstanceAccounting`` (``gateway/seams.py``) are the data plane's
view of the same methods; every ``ControlPlaneClient`` is both.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from superollama.agent import NodeAgent
from superollama.control.controller import Controller
from superollama.control.credentials import CredentialStore
from superollama.control.routing import Route, RouteTarget, RoutingHolder

__all__ = ["ControlPlaneClient", "KeyListeners", "KeysListener", "LocalControlPlane"]

log = logging.getLogger("superollama.control")

KeysListener = Callable[[], Awaitable[object]]


class ControlPlaneClient(Protocol):
    """What a gateway process asks of the control plane (see the module's docstring)."""

    @property
    def holder(self) -> RoutingHolder:
        """The current routing snapshot (``holder.table``), swapped on every change."""
        ...

    @property
    def credentials(self) -> CredentialStore:
        """Upstream credentials by name, in memory only, updated before a snapshot naming them."""
        ...

    def on_keys_changed(self, listener: KeysListener) -> None:
        """Run ``listener`` after API keys changed (created, revoked, rotated) through any gateway."""
        ...

    async def ensure_ready(self, route: Route) -> RouteTarget: ...

    async def replace(self, route: Route, failed: str, *, reached: bool) -> RouteTarget | None: ...

    def in_flight(self, instance_id: str) -> int: ...

    def acquire(self, instance_id: str) -> None: ...

    def release(self, instance_id: str) -> None: ...

    def set_keep_alive(self, version: str, seconds: float | None) -> None: ...

    def expires_in(self, version: str) -> float | None: ...

    async def unload(self, version: str, *, reason: str = "requested") -> bool: ...


class KeyListeners:
    """Who reloads when keys changed: every ``ControlPlaneClient`` keeps one of these."""

    def __init__(self) -> None:
        self._listeners: list[KeysListener] = []

    def add(self, listener: KeysListener) -> None:
        self._listeners.append(listener)

    async def notify(self) -> None:
        """Call every listener; one that fails is logged and the others still run."""
        for listener in list(self._listeners):
            try:
                await listener()
            except Exception:
                log.exception("reloading after a key change failed")


class LocalControlPlane:
    """``ControlPlaneClient`` in the process that runs the controller (and drives the node agent)."""

    def __init__(
        self,
        controller: Controller,
        agent: NodeAgent,
        holder: RoutingHolder,
        credentials: CredentialStore,
    ) -> None:
        self.controller = controller
        self.agent = agent
        self._holder = holder
        self._credentials = credentials
        self._keys = KeyListeners()

    @property
    def holder(self) -> RoutingHolder:
        return self._holder

    @property
    def credentials(self) -> CredentialStore:
        return self._credentials

    def on_keys_changed(self, listener: KeysListener) -> None:
        self._keys.add(listener)

    async def keys_changed(self) -> None:
        """Tell every listener that keys changed (the change feed and the key routes call this)."""
        await self._keys.notify()

    async def ensure_ready(self, route: Route) -> RouteTarget:
        return await self.controller.ensure_ready(route)

    async def replace(self, route: Route, failed: str, *, reached: bool) -> RouteTarget | None:
        return await self.controller.replace(route, failed, reached=reached)

    def in_flight(self, instance_id: str) -> int:
        return self.agent.in_flight(instance_id)

    def acquire(self, instance_id: str) -> None:
        self.agent.acquire(instance_id)

    def release(self, instance_id: str) -> None:
        self.agent.release(instance_id)

    def set_keep_alive(self, version: str, seconds: float | None) -> None:
        self.agent.set_keep_alive(version, seconds)

    def expires_in(self, version: str) -> float | None:
        return self.agent.expires_in(version)

    async def unload(self, version: str, *, reason: str = "requested") -> bool:
        return await self.agent.unload(version, reason=reason)
