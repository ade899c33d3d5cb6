"""Versions scaled by themselves: ``superollama scale VERSION --replicas N [--device …] [--node …]
[--labels …] [--spread]`` (``POST /admin/v1/models/NAME/scale``).

Clients name a version directly (no deployment); this says how many instances of it run and where they
may. The setting is desired state in the registry (``version_placements``, migration 18), so a restart
keeps it, and it joins the deployments' wishes in the controller (``control/placement.wanted``: the most
replicas anyone asks; its own placement first). A change runs under the deployments' lock (one change
at a time), checks the constraint (a pin to a node that exists: 404; not another one than a deployment
asks of the same version: 409), writes it, then starts the missing instances and waits for them (or
drains a surplus). When they cannot start (nothing fits: 503), the setting it had is put back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from superollama.agent.agent import MAX_REPLICAS
from superollama.control.controller import Controller
from superollama.control.placement import check_node, conflicting
from superollama.core import EventRecord
from superollama.core.deployments import VersionScale
from superollama.core.placement import PlacementConstraint
from superollama.core.routing import Deployment
from superollama.errors import InvalidRequest, NotFound

__all__ = ["VersionScales"]


class VersionScales:
    def __init__(
        self,
        controller: Controller,
        lock: asyncio.Lock,
        deployments: Callable[[], Iterable[Deployment]],
        refresh: Callable[[], Awaitable[None]],
        current: Callable[[str], VersionScale | None],
    ) -> None:
        self._controller = controller
        self._registry = controller.registry
        self._lock = lock
        self._deployments = deployments
        self._refresh = refresh
        self._current = current

    async def scale(
        self,
        name: str,
        replicas: int,
        *,
        placement: PlacementConstraint | None = None,
        actor: str = "api",
    ) -> dict[str, Any]:
        """N instances of version ``name`` where ``placement`` allows (None: the constraint it had); the
        answer is ``show``'s."""
        if not 1 <= replicas <= MAX_REPLICAS:
            raise InvalidRequest(f"replicas are 1 to {MAX_REPLICAS}", param="replicas")
        route = self._controller.holder.table.lookup(name)
        if route is None:
            raise NotFound(f"model {name!r} not found", param="name")
        if route.connection is not None:
            raise InvalidRequest(f"{name!r} is a connection's model: it has no replicas here", param="name")
        version = route.version
        async with self._lock:
            # the registry's row, not the reloaded copy: a change made elsewhere may not be reloaded yet
            prior = await self._registry.version_scales.find(version)
            if placement is None:
                placement = prior.placement if prior is not None else PlacementConstraint()
            conflicting(version, placement, self._deployments(), (), but="scale")
            await check_node(self._registry, placement)
            await self._registry.version_scales.put(VersionScale(version, replicas, placement))
            await self._refresh()
            try:
                await self._controller.scale(version, self._controller.replicas_for(version))
            except Exception as exc:
                await self._registry.version_scales.put(prior or VersionScale(version))
                await self._refresh()
                reason = getattr(exc, "message", None) or str(exc)
                await self._event(version, actor, {"error": reason}, result="failed")
                raise
        detail = {"replicas": replicas, "placement": None if placement.empty else placement.as_json()}
        await self._event(version, actor, detail)
        return self.show(version)

    def show(self, version: str) -> dict[str, Any]:
        """A version's scale as the API shows it, with the instances it runs (node, state, device)."""
        saved = self._current(version) or VersionScale(version)
        agent = self._controller.agent
        instances = [
            {"id": i.id, "node": i.record("local").node, "state": str(i.state), "device": i.device}
            for i in (agent.instances_of(version) if agent else ())
        ]
        return {**saved.as_json(), "wanted": self._controller.replicas_for(version), "instances": instances}

    async def _event(self, version: str, actor: str, detail: dict[str, Any], *, result: str = "ok") -> None:
        event = EventRecord(action="version.scale", target=version, actor=actor, result=result, detail=detail)
        await self._registry.events.add(event)
