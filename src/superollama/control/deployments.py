"""Deployment use cases: deploy, split, promote, rollback, pause, resume, remove, list, show.

A deployment is what clients name in ``model``; each stage (``chat``, ``chat@staging``) holds weighted
targets (versions, or models of connections). Every change goes through one path, ``_change``:

1. check the new target set (each target exists; weights sum above zero);
2. **swap**: each version that gains traffic gets a ready instance first — started, healthy, and one
   warm-up request answered — before any weight moves to it (``control.swap``);
3. write the set (the old one becomes history: ``rollback`` brings it back) and publish a snapshot;
4. versions that lost all traffic (in every deployment) drain in the background: no new requests, those
   in flight finish (bounded by ``deploy_drain_timeout``), then their instance stops.

When this node's memory cannot hold the old and the new instance at once, the swap stops the old one
first and requests for the deployment wait (bounded) for the new one — said in the change's result and
its event.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from superollama.agent.agent import MAX_REPLICAS
from superollama.control.controller import Controller
from superollama.control.placement import check_node, conflicting
from superollama.control.scales import VersionScales
from superollama.control.swap import Swapper, SwapPlan, SwapResult
from superollama.core import EventRecord
from superollama.core.deployments import DeploymentRecord, HistoryEntry, VersionScale
from superollama.core.placement import PlacementConstraint
from superollama.core.routing import (
    PRODUCTION,
    STICKY_MODES,
    Deployment,
    DeploymentTarget,
    RoutingTable,
    split_stage,
)
from superollama.errors import Conflict, InvalidRequest, NotFound

__all__ = ["DeploymentDetails", "DeploymentManager", "parse_targets"]

log = logging.getLogger("superollama.deployments")

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class DeploymentDetails:
    record: DeploymentRecord
    history: list[HistoryEntry]
    live: list[dict[str, Any]]  # per target: weight share and ready instances
    swap: SwapResult | None = None

    def as_json(self) -> dict[str, Any]:
        out = self.record.as_json()
        out["live"] = self.live
        out["history"] = [h.as_json() for h in self.history]
        if self.swap is not None:
            out["swap"] = self.swap.as_json()
        return out


def parse_targets(specs: Sequence[str], *, replicas: int = 1) -> list[DeploymentTarget]:
    """``["smollm2:135m=90", "gemma3:270m=10x2"]`` → targets; a spec without ``=W`` gets weight 100; a
    weight followed by ``xN`` asks for N replicas of that target (``replicas`` otherwise)."""
    out = []
    for spec in specs:
        name, eq, weight = spec.rpartition("=")
        if not eq:
            name, weight = spec, "100"
        weight, x, count = weight.partition("x")
        try:
            w = int(weight)
            n = int(count) if x else replicas
        except ValueError:
            raise InvalidRequest(
                f"target {spec!r}: the weight after '=' must be an integer, optionally followed by "
                "'xN' replicas (=100x2)",
                param="targets",
            ) from None
        out.append(DeploymentTarget(name.strip(), w, replicas=n))
    return out


class DeploymentManager:
    def __init__(
        self,
        controller: Controller,
        swapper: Swapper,
        *,
        gate_timeout: float = 120.0,
        gate_queue: int = 512,
    ) -> None:
        self._controller = controller
        self._registry = controller.registry
        self._swapper = swapper
        self._records: dict[str, DeploymentRecord] = {}  # by client name
        self._scales: dict[str, VersionScale] = {}  # versions scaled by themselves, by version
        self._pending: DeploymentRecord | None = None  # a change whose swap runs (not yet published)
        self._lock = asyncio.Lock()  # one change at a time: each swap sees the last one's result
        self._reloading = asyncio.Lock()  # one reload at a time: an older read never replaces a newer one
        # ``scale VERSION --replicas N``: under the same lock, refreshing this manager after each change
        self.versions = VersionScales(controller, self._lock, self.routing, self.refresh, self.scale_of)
        controller.use_deployments(
            self.routing, gate_timeout=gate_timeout, gate_queue=gate_queue, planned=self._planned
        )

    async def start(self) -> None:
        await self.refresh()

    async def refresh(self) -> None:
        """Reload the deployments and the versions scaled by themselves from the registry. The change
        feed calls this while this manager's own changes call it too: reloads run one at a time (each
        reads after the last one is in place), and each puts its whole snapshot in place at once, so
        no reader ever sees a half-loaded or an older state."""
        async with self._reloading:
            records = {r.client_name: r for r in await self._registry.deployments.list()}
            scales = {s.version: s for s in await self._registry.version_scales.list()}
            self._records, self._scales = records, scales
            self._controller.use_scales(scales.values())
            self._controller.republish()

    def scale_of(self, version: str) -> VersionScale | None:
        """The version's own scale as last reloaded (None: one instance, no constraint)."""
        return self._scales.get(version)

    def routing(self) -> list[Deployment]:
        return [r.routing() for r in self._records.values()]

    def _planned(self) -> list[Deployment]:
        """The deployments with the change in progress in place of its stage: what instances started by
        its swap are for (their replicas and placement)."""
        pending = self._pending
        if pending is None:
            return self.routing()
        others = [r.routing() for r in self._records.values() if r.client_name != pending.client_name]
        return [*others, pending.routing()]

    # -- reading ---------------------------------------------------------------------------------
    async def list(self) -> list[DeploymentRecord]:
        return sorted(self._records.values(), key=lambda r: (r.name, r.stage))

    async def show(self, name: str) -> DeploymentDetails:
        base, stage = self._split(name)
        record = await self._registry.deployments.get(base, stage)
        return self._details(record, await self._registry.deployments.history(base, stage))

    # -- changes ---------------------------------------------------------------------------------
    async def deploy(
        self,
        name: str,
        targets: Sequence[DeploymentTarget],
        *,
        stage: str | None = None,
        sticky: str | None = None,
        actor: str = "api",
    ) -> DeploymentDetails:
        """Create the stage, or give it a new target set (the swap runs before any weight moves)."""
        base, parsed_stage = self._split(name)
        stage = stage or parsed_stage
        self._check_name(base, stage)
        async with self._lock:
            before = await self._registry.deployments.find(base, stage)
            sticky = sticky or (before.sticky if before else "none")
            new = DeploymentRecord(base, stage, self._checked(targets), self._sticky(sticky))
            return await self._change(before, new, "deployment.deploy", actor, self._registry.deployments.put)

    async def split(
        self, name: str, targets: Sequence[DeploymentTarget], *, sticky: str | None = None, actor: str = "api"
    ) -> DeploymentDetails:
        """New weights for an existing stage (``deploy`` that refuses to create); a target that was there
        keeps its placement unless it names another."""
        base, stage = self._split(name)
        before = await self._registry.deployments.get(base, stage)
        kept = {t.name: t.placement for t in before.targets}
        table = self._controller.holder.table
        targets = [
            replace(t, placement=kept.get(_routed(table, t.name), t.placement)) if t.placement.empty else t
            for t in targets
        ]
        return await self.deploy(name, targets, stage=stage, sticky=sticky, actor=actor)

    async def scale(
        self,
        name: str,
        target: str,
        replicas: int,
        *,
        placement: PlacementConstraint | None = None,
        actor: str = "api",
    ) -> DeploymentDetails:
        """Run ``replicas`` instances of one target of the stage (the others keep theirs): the new ones
        start (in parallel) and join when ready; a surplus drains, no request cut. ``placement``: the
        target's new constraint (None: it keeps its own)."""
        base, stage = self._split(name)
        async with self._lock:
            before = await self._registry.deployments.get(base, stage)
            route = self._controller.holder.table.lookup(target)
            wanted = route.name if route is not None else target
            if not any(t.name == wanted for t in before.targets):
                names = ", ".join(t.name for t in before.targets)
                raise NotFound(
                    f"{target!r} is not a target of {before.client_name!r} (its targets: {names})",
                    param="target",
                )
            targets = tuple(
                replace(t, replicas=replicas, placement=t.placement if placement is None else placement)
                if t.name == wanted
                else t
                for t in before.targets
            )
            new = replace(before, targets=self._checked(targets))
            return await self._change(before, new, "deployment.scale", actor, self._registry.deployments.put)

    async def promote(self, name: str, *, to: str = PRODUCTION, actor: str = "api") -> DeploymentDetails:
        """``chat@staging`` → production gets staging's target set (and stickiness)."""
        base, stage = self._split(name)
        if stage == to:
            raise InvalidRequest(f"name a stage to promote, as {base}@staging", param="name")
        source = await self._registry.deployments.get(base, stage)
        details = await self.deploy(base, source.targets, stage=to, sticky=source.sticky, actor=actor)
        await self._event("deployment.promote", source.client_name, actor, {"to": to})
        return details

    async def rollback(self, name: str, *, actor: str = "api") -> DeploymentDetails:
        """Back to the target set the stage had before its last change (one step per call)."""
        base, stage = self._split(name)
        async with self._lock:
            before = await self._registry.deployments.get(base, stage)
            history = await self._registry.deployments.history(base, stage)
            if not history:
                raise NotFound(f"deployment {before.client_name!r} has no earlier target set", param="name")
            new = replace(before, targets=history[0].targets, sticky=history[0].sticky)

            async def write(_: DeploymentRecord) -> DeploymentRecord:
                return await self._registry.deployments.rollback(base, stage)

            return await self._change(before, new, "deployment.rollback", actor, write)

    async def set_enabled(self, name: str, enabled: bool, *, actor: str = "api") -> DeploymentRecord:
        """Pause (the stage answers as disabled; nothing shifts) or resume it."""
        base, stage = self._split(name)
        record = await self._registry.deployments.set_enabled(base, stage, enabled)
        await self.refresh()
        await self._event(
            "deployment.resume" if enabled else "deployment.pause", record.client_name, actor, {}
        )
        return record

    async def remove(self, name: str, *, actor: str = "api") -> None:
        base, stage = self._split(name)
        async with self._lock:
            before = await self._registry.deployments.get(base, stage)
            await self._registry.deployments.delete(base, stage)
            await self.refresh()
            self._swapper.retire(_weighted(before.targets) - self._in_use(), before.client_name)
        await self._event("deployment.remove", before.client_name, actor, {})

    # -- the one change path ---------------------------------------------------------------------
    async def _change(
        self,
        before: DeploymentRecord | None,
        new: DeploymentRecord,
        action: str,
        actor: str,
        write: Callable[[DeploymentRecord], Awaitable[DeploymentRecord]],
    ) -> DeploymentDetails:
        await self._check_placements(new)
        old_names = _weighted(before.targets) if before else set()
        new_names = _weighted(new.targets)
        leaving = sorted(old_names - new_names - self._in_use(but=new.client_name))
        incoming = sorted(new_names - old_names)
        replicas = {t.name: t.replicas for t in new.targets if t.name in incoming and t.replicas > 1}
        plan = SwapPlan(new.client_name, incoming, leaving, replicas)

        async def publish() -> None:
            saved = await write(new)
            self._records[saved.client_name] = saved
            self._controller.republish()

        was = {t.name: t.placement for t in before.targets} if before else {}
        moved = frozenset(t.name for t in new.targets if was.get(t.name, t.placement) != t.placement)
        self._pending = new  # the swap's instances start with the new target's replicas and placement
        self._controller.republish()
        try:
            await self._scale_running(new, incoming, up=True, placed=moved)  # memory refuses here first
            result = await self._swapper.run(plan, publish)
        except Exception as exc:
            self._pending = None
            self._controller.republish()
            await self._restore(moved)
            reason = getattr(exc, "message", None) or str(exc)
            await self._event(action, new.client_name, actor, {"error": reason}, result="failed")
            raise
        finally:
            self._pending = None
            self._controller.republish()
        self._swapper.retire(leaving, new.client_name)
        await self._scale_running(new, incoming, up=False)
        detail: dict[str, Any] = {
            "targets": [
                f"{t.name}={t.weight}" + (f"x{t.replicas}" if t.replicas != 1 else "") for t in new.targets
            ],
            "sticky": new.sticky,
        }
        placed = {t.name: t.placement.as_json() for t in new.targets if not t.placement.empty}
        if placed:
            detail["placement"] = placed
        await self._event(action, new.client_name, actor, {**detail, "swap": result.as_json()})
        return replace(await self.show(new.client_name), swap=result)

    # -- helpers ---------------------------------------------------------------------------------
    async def _scale_running(
        self,
        new: DeploymentRecord,
        incoming: Sequence[str],
        *,
        up: bool,
        placed: frozenset[str] = frozenset(),
    ) -> None:
        """The targets of ``new`` that run here already get their replicas: more before the change is
        published (``up``: they start and join when ready; a 409 when memory cannot hold them), fewer
        after it (the surplus drains: no request cut)."""
        agent = self._controller.agent
        if agent is None:
            return
        others: dict[str, int] = {}  # what the other stages want of the same versions
        for r in self._records.values():
            for o in r.targets if r.client_name != new.client_name else ():
                if o.weight > 0:
                    others[o.name] = max(others.get(o.name, 1), o.replicas)
        for t in new.targets:
            if t.weight <= 0 or t.name in incoming or not agent.instances_of(t.name):
                continue
            want = max(t.replicas, others.get(t.name, 1))
            running = sum(1 for i in agent.instances_of(t.name) if i.state == "ready")
            moved = t.name in placed  # its constraint changed: the agent gets it for its next starts
            if (want > running or moved) if up else (want != agent.replicas(t.name) or want < running):
                await self._controller.scale(t.name, want, start=False)

    async def _restore(self, versions: frozenset[str]) -> None:
        """A change that failed gave the agent new placements for running versions: the ones in force
        go back (their next starts honour them, not the refused change's)."""
        agent = self._controller.agent
        for version in sorted(versions):
            if agent is not None and agent.instances_of(version):
                with contextlib.suppress(Exception):
                    await self._controller.scale(version, self._controller.replicas_for(version), start=False)

    async def _check_placements(self, new: DeploymentRecord) -> None:
        """Each target's constraint: a pinned node the registry knows (404), and the same as what the
        other deployments and the version's own scale ask of that version (409)."""
        others = [r.routing() for r in self._records.values() if r.client_name != new.client_name]
        for t in new.targets:
            if t.placement.empty:
                continue
            if t.weight > 0:
                conflicting(t.name, t.placement, others, self._scales.values())
            await check_node(self._registry, t.placement)

    def _in_use(self, but: str | None = None) -> set[str]:
        """Versions some deployment stage (other than ``but``) still sends traffic to."""
        return {n for r in self._records.values() if r.client_name != but for n in _weighted(r.targets)}

    def _details(self, record: DeploymentRecord, history: builtins.list[HistoryEntry]) -> DeploymentDetails:
        table = self._controller.holder.table
        dep = table.deployment(record.client_name)
        total = sum(t.weight for t in record.targets if t.weight > 0 and t.role == "primary") or 1
        agent = self._controller.agent
        live = []
        for t in record.targets:
            route = table.lookup(t.name)
            routed_ids = {i.instance_id for i in (route.targets if route else ())}
            instances = [
                {
                    "id": i.instance_id,
                    "node": i.node,
                    "state": "ready",
                    "endpoint": i.endpoint.base_url,
                    "in_flight": agent.in_flight(i.instance_id) if agent else 0,
                }
                for i in (route.targets if route else ())
            ]
            for inst in agent.instances_of(t.name) if agent else ():
                if inst.id not in routed_ids:  # starting to serve, or draining
                    instances.append(
                        {
                            "id": inst.id,
                            "node": inst.record("local").node,
                            "state": str(inst.state),
                            "endpoint": inst.handle.endpoint.base_url,
                            "in_flight": agent.in_flight(inst.id) if agent else 0,
                        }
                    )
            routed = dep is not None and any(c.name == t.name for c in dep.choices)
            live.append(
                {
                    "name": t.name,
                    "weight": t.weight,
                    "share": round(100.0 * max(t.weight, 0) / total, 2),
                    "role": t.role,
                    "replicas": t.replicas,
                    "placement": None if t.placement.empty else t.placement.as_json(),
                    "routed": routed,
                    "instances": instances,
                }
            )
        return DeploymentDetails(record, history, live)

    def _checked(self, targets: Sequence[DeploymentTarget]) -> tuple[DeploymentTarget, ...]:
        if not targets:
            raise InvalidRequest("a deployment needs at least one target", param="targets")
        table = self._controller.holder.table
        out: list[DeploymentTarget] = []
        for t in targets:
            route = table.lookup(t.name)
            if route is None:
                raise InvalidRequest(
                    f"target {t.name!r} is neither a version nor a connection's model", param="targets"
                )
            if t.weight < 0:
                raise InvalidRequest(f"target {t.name!r}: weights are 0 or more", param="targets")
            if t.role not in ("primary", "shadow") or (t.role == "shadow" and t.weight > 100):
                raise InvalidRequest(
                    f"target {t.name!r}: role is primary, or shadow with a weight (percent) up to 100",
                    param="targets",
                )
            if not 1 <= t.replicas <= MAX_REPLICAS:
                raise InvalidRequest(f"target {t.name!r}: replicas are 1 to {MAX_REPLICAS}", param="replicas")
            if t.replicas != 1 and route.connection is not None:
                raise InvalidRequest(
                    f"target {t.name!r} is a connection's model: it has no replicas here", param="replicas"
                )
            if any(o.name == route.name for o in out):
                raise InvalidRequest(f"target {route.name!r} is named twice", param="targets")
            out.append(replace(t, name=route.name))
        if sum(t.weight for t in out if t.role == "primary") <= 0:
            raise InvalidRequest("the weights must add up to more than 0", param="targets")
        return tuple(out)

    def _check_name(self, base: str, stage: str) -> None:
        if not _NAME.match(base) or not _NAME.match(stage):
            raise InvalidRequest(
                f"deployment name {base!r} (stage {stage!r}): lowercase letters, digits, '.', '_', '-' only",
                param="name",
            )
        if self._controller.holder.table.lookup(base) is not None:
            raise Conflict(f"{base!r} is already a model's name; pick another deployment name", param="name")

    @staticmethod
    def _sticky(value: str) -> str:
        if value not in STICKY_MODES:
            raise InvalidRequest(f"sticky must be one of {', '.join(STICKY_MODES)}", param="sticky")
        return value

    @staticmethod
    def _split(name: str) -> tuple[str, str]:
        return split_stage(name.strip())

    async def _event(
        self, action: str, target: str, actor: str, detail: dict[str, Any], *, result: str = "ok"
    ) -> None:
        await self._registry.events.add(
            EventRecord(action=action, target=target, actor=actor, result=result, detail=detail)
        )


def _weighted(targets: Sequence[DeploymentTarget]) -> set[str]:
    return {t.name for t in targets if t.weight > 0}


def _routed(table: RoutingTable, name: str) -> str:
    route = table.lookup(name)
    return route.name if route is not None else name
