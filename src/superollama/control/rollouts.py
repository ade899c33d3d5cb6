"""Canary rollouts and shadow targets of deployments, and the analysis that moves a rollout on.

A rollout moves a deployment stage's traffic from its one ``stable`` target to a new ``target``: it
starts at ``canary`` % (through ``DeploymentManager``, so the new target's instance is started and warm
before it gets any weight), and the **analysis** — run by the reconciler leader only, every
``rollout_tick`` seconds — judges the canary against the stable target over the same window, from what
every gateway process reported (``registry.windows``; see ``telemetry/windows.py``):

* out of bounds (error rate, or p95 against the stable target's) → **roll back** at once: the stage goes
  back to the stable target alone;
* within bounds and its step is due (``every``) → the next weight, or **promote** at 100 %;
* too few canary samples → **hold** (judged again at the next tick).

Each decision is kept in the rollout (``decisions``), written as an event (``rollout.<action>``: the
events stream and, for those the webhook takes, the webhook), and each weight change goes through the
deployment's one change path, so it is in the deployment's history. The rollout's state lives in the
registry: a control plane that restarts (or a new leader) picks it up where it was.

A **shadow** target is a deployment target with role ``shadow`` and a weight that is the percentage of
requests mirrored to it (``gateway/shadow.py`` sends the copies; the comparisons are ``registry.shadows``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from superollama.control.deployments import DeploymentManager
from superollama.control.feed import Nudge
from superollama.core import EventRecord
from superollama.core.canary import CanaryPolicy, Decision, WindowStats, decide
from superollama.core.deployments import RolloutRecord
from superollama.core.placement import PlacementConstraint
from superollama.core.routing import DeploymentTarget, split_stage
from superollama.errors import Conflict, InvalidRequest, NotFound, SuperOllamaError
from superollama.registry import Registry

__all__ = ["RolloutManager"]

log = logging.getLogger("superollama.rollouts")

Notify = Callable[[EventRecord], None]


class RolloutManager:
    def __init__(
        self,
        deployments: DeploymentManager,
        registry: Registry,
        *,
        tick: float,
        fresh: float,
        is_leader: Callable[[], bool],
        notify: Notify | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        nudge: Nudge | None = None,
    ) -> None:
        """``nudge``: the change feed's for the ``rollouts`` topic; with none running, the analysis sleeps
        on it (a rollout started anywhere wakes it) instead of looking every ``tick``."""
        self._deployments = deployments
        self._nudge = nudge or Nudge(watched=False)
        self._registry = registry
        self._tick = tick
        self._fresh = fresh  # seconds a gateway's window report counts (a few report intervals)
        self._is_leader = is_leader
        self._notify = notify
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rollout-analysis")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- rollouts ---------------------------------------------------------------------------------
    async def begin(self, name: str, to: str, policy: CanaryPolicy, *, actor: str = "api") -> RolloutRecord:
        """Start moving ``name``'s traffic to ``to``: ``policy.canary`` % now, the rest by analysis."""
        _check_policy(policy)
        base, stage = split_stage(name.strip())
        record = await self._registry.deployments.get(base, stage)
        current = await self._registry.rollouts.find(base, stage)
        if current is not None and current.state == "running":
            raise Conflict(f"deployment {record.client_name!r} has a rollout running; abort it first")
        weighted = [t for t in record.targets if t.role == "primary" and t.weight > 0]
        if len(weighted) != 1:
            raise InvalidRequest(
                f"a rollout starts from one target with traffic; {record.client_name!r} has "
                f"{len(weighted)} (deploy one target first)",
                param="name",
            )
        stable = weighted[0].name
        details = await self._deployments.deploy(
            record.client_name, _targets(record.targets, stable, to, policy.canary), actor=actor
        )
        target = next(t.name for t in details.record.targets if t.role == "primary" and t.name != stable)
        now = self._clock()
        rollout = RolloutRecord(
            base,
            stage,
            "running",
            stable,
            target,
            policy.canary,
            policy,
            (_entry(now, "start", policy.canary, f"canary {target} at {policy.canary} %", actor),),
            now + timedelta(seconds=policy.every),
        )
        saved = await self._registry.rollouts.put(rollout)
        self._nudge.set()
        await self._event("rollout.start", saved, actor, {"to": target, "policy": policy.as_json()})
        return saved

    async def status(self, name: str) -> dict[str, Any]:
        base, stage = split_stage(name.strip())
        rollout = await self._registry.rollouts.get(base, stage)
        out = rollout.as_json()
        out["live"] = await self.live(rollout.client_name)
        return out

    async def running(self) -> dict[str, dict[str, Any]]:
        """The running rollouts by client name (``chat``, ``chat@staging``): what the list shows of each."""
        return {
            r.client_name: {"state": r.state, "stable": r.stable, "target": r.target, "weight": r.weight}
            for r in await self._registry.rollouts.running()
        }

    async def live(self, deployment: str) -> dict[str, Any]:
        """Per target: the sum of every gateway's window, and how many gateway processes reported."""
        collected = await self._registry.windows.collect(deployment, fresh=self._fresh)
        return {
            target: {**stats.as_json(), "gateways": reporters, "shadow_dropped": dropped}
            for target, (stats, dropped, reporters) in collected.items()
        }

    async def describe(self, name: str) -> dict[str, Any]:
        """What ``deployments show`` adds: the stage's rollout (running or last) and shadow comparisons."""
        base, stage = split_stage(name.strip())
        rollout = await self._registry.rollouts.find(base, stage)
        out: dict[str, Any] = {"rollout": rollout.as_json() if rollout else None}
        client = rollout.client_name if rollout else (base if stage == "production" else f"{base}@{stage}")
        out["metrics"] = await self.live(client)
        out["shadow"] = await self.shadow_summary(name)
        return out

    async def abort(self, name: str, *, actor: str = "api") -> RolloutRecord:
        """Stop a running rollout: the stage goes back to its stable target alone."""
        base, stage = split_stage(name.strip())
        async with self._lock:
            rollout = await self._registry.rollouts.get(base, stage)
            if rollout.state != "running":
                raise Conflict(f"the rollout of {rollout.client_name!r} is {rollout.state}, not running")
            return await self._finish(rollout, Decision("rollback", 0, "aborted"), "aborted", actor, {})

    # -- shadow -----------------------------------------------------------------------------------
    async def shadow(self, name: str, to: str | None, percent: int, *, actor: str = "api") -> dict[str, Any]:
        """Mirror ``percent`` % of ``name``'s requests to ``to`` (``to`` None or ``percent`` 0: off)."""
        if not 0 <= percent <= 100:
            raise InvalidRequest("percent is between 0 and 100", param="percent")
        base, stage = split_stage(name.strip())
        record = await self._registry.deployments.get(base, stage)
        kept = [t for t in record.targets if t.role != "shadow"]
        if to is not None and percent > 0:
            if any(t.name == to and t.role == "primary" and t.weight > 0 for t in kept):
                raise InvalidRequest(f"{to!r} already answers {record.client_name!r}", param="to")
            # a target left at weight 0 (an aborted canary, say) answers nothing: it becomes the shadow
            kept = [t for t in kept if t.name != to]
            kept.append(DeploymentTarget(to, percent, "shadow"))
        elif len(kept) == len(record.targets):
            raise NotFound(f"deployment {record.client_name!r} has no shadow target", param="name")
        details = await self._deployments.deploy(record.client_name, kept, actor=actor)
        return details.as_json()

    async def shadow_summary(self, deployment: str, *, last: int = 10) -> dict[str, Any] | None:
        base, stage = split_stage(deployment.strip())
        record = await self._registry.deployments.get(base, stage)
        shadow = next((t for t in record.targets if t.role == "shadow"), None)
        summary = await self._registry.shadows.summary(record.client_name, last=last)
        if shadow is None and not summary["samples"]:
            return None
        collected = await self._registry.windows.collect(record.client_name, fresh=self._fresh)
        dropped = sum(d for _, d, _ in collected.values())
        on = {"target": shadow.name, "percent": shadow.weight} if shadow else None
        return {"shadow": on, "dropped": dropped, **summary}

    # -- the analysis (leader only) ---------------------------------------------------------------
    async def _run(self) -> None:
        pruned = time.monotonic()
        running = 1  # the first pass looks, whatever the nudge says
        while True:
            if running:  # a running rollout steps on time: every tick
                await asyncio.sleep(self._tick)
            else:
                await self._nudge.sleep(self._tick)
            if not self._is_leader():
                running = 1
                continue
            try:
                running = await self.analyse()
                if time.monotonic() - pruned >= 600:  # reports of gateway processes gone long ago
                    pruned = time.monotonic()
                    await self._registry.windows.prune(older_than=600)
            except Exception:
                running = 1
                log.exception("rollout analysis failed")

    async def analyse(self) -> int:
        """One pass over the running rollouts (what the leader does every tick); how many there were."""
        async with self._lock:
            rollouts = await self._registry.rollouts.running()
            for rollout in rollouts:
                try:
                    await self._judge(rollout)
                except SuperOllamaError as exc:
                    log.warning("rollout of %s: %s", rollout.client_name, exc.message)
        return len(rollouts)

    async def _judge(self, rollout: RolloutRecord) -> None:
        now = self._clock()
        record = await self._registry.deployments.find(rollout.name, rollout.stage)
        names = {t.name for t in record.targets if t.role == "primary"} if record else set()
        if record is None or rollout.target not in names or rollout.stable not in names:
            await self._end(rollout, "aborted", _entry(now, "abort", 0, "the deployment changed by hand"))
            return
        collected = await self._registry.windows.collect(rollout.client_name, fresh=self._fresh)
        canary = collected.get(rollout.target, (WindowStats(), 0, 0))[0]
        stable = collected.get(rollout.stable, (WindowStats(), 0, 0))[0]
        decision = decide(rollout.weight, canary, stable, rollout.policy)
        stats = {"canary": canary.as_json(), "stable": stable.as_json()}
        if decision.action == "rollback":
            await self._finish(rollout, decision, "rolled_back", "rollout", stats)
        elif decision.action == "hold":
            last = rollout.decisions[-1] if rollout.decisions else {}
            if last.get("action") != "hold":  # one hold decision per wait, not one per tick
                entry = _entry(now, "hold", rollout.weight, decision.reason, "rollout", stats=stats)
                await self._registry.rollouts.put(replace(rollout, decisions=(*rollout.decisions, entry)))
                await self._event("rollout.hold", rollout, "rollout", {"reason": decision.reason, **stats})
        elif now >= rollout.next_at:
            if decision.action == "promote":
                await self._finish(rollout, decision, "promoted", "rollout", stats)
            else:
                await self._step(rollout, decision, stats)

    async def _step(self, rollout: RolloutRecord, decision: Decision, stats: dict[str, Any]) -> None:
        record = await self._registry.deployments.get(rollout.name, rollout.stage)
        targets = _targets(record.targets, rollout.stable, rollout.target, decision.weight)
        await self._deployments.deploy(rollout.client_name, targets, actor="rollout")
        now = self._clock()
        entry = _entry(now, "step", decision.weight, decision.reason, "rollout", stats=stats)
        await self._registry.rollouts.put(
            replace(
                rollout,
                weight=decision.weight,
                decisions=(*rollout.decisions, entry),
                next_at=now + timedelta(seconds=rollout.policy.every),
            )
        )
        await self._event("rollout.step", rollout, "rollout", {"weight": decision.weight, **stats})

    async def _finish(
        self, rollout: RolloutRecord, decision: Decision, state: str, actor: str, stats: dict[str, Any]
    ) -> RolloutRecord:
        """Promote (the target alone) or go back (the stable target alone)."""
        record = await self._registry.deployments.get(rollout.name, rollout.stage)
        keep = rollout.target if decision.action == "promote" else rollout.stable
        extra = [t for t in record.targets if t.role != "primary"]
        where = _placement_of(record.targets, rollout.stable)
        await self._deployments.deploy(
            rollout.client_name, [DeploymentTarget(keep, 100, placement=where), *extra], actor=actor
        )
        action = {"promoted": "promote", "rolled_back": "rollback", "aborted": "abort"}[state]
        entry = _entry(self._clock(), action, decision.weight, decision.reason, actor, stats=stats)
        return await self._end(rollout, state, entry)

    async def _end(self, rollout: RolloutRecord, state: str, entry: dict[str, Any]) -> RolloutRecord:
        saved = await self._registry.rollouts.put(
            replace(rollout, state=state, weight=entry["weight"], decisions=(*rollout.decisions, entry))
        )
        detail = {k: v for k, v in entry.items() if k not in ("at", "actor")}
        await self._event(f"rollout.{entry['action']}", saved, str(entry["actor"]), detail)
        log.info("rollout of %s: %s (%s)", saved.client_name, entry["action"], entry["reason"])
        return saved

    async def _event(self, action: str, rollout: RolloutRecord, actor: str, detail: dict[str, Any]) -> None:
        event = EventRecord(action=action, target=rollout.client_name, actor=actor, detail=detail)
        await self._registry.events.add(event)
        if self._notify is not None:
            self._notify(event)


def _targets(
    current: tuple[DeploymentTarget, ...], stable: str, target: str, weight: int
) -> list[DeploymentTarget]:
    """The stage's targets with ``weight`` % on ``target`` and the rest on ``stable`` (shadows kept)."""
    extra = [t for t in current if t.role != "primary"]
    where = _placement_of(current, stable)  # the canary runs where the stable version may
    return [
        DeploymentTarget(stable, 100 - weight, placement=where),
        DeploymentTarget(target, weight, placement=where),
        *extra,
    ]


def _placement_of(targets: tuple[DeploymentTarget, ...], name: str) -> PlacementConstraint:
    """The placement constraint of target ``name`` (none if it is not a target)."""
    return next((t.placement for t in targets if t.name == name), PlacementConstraint())


def _entry(
    at: datetime,
    action: str,
    weight: int,
    reason: str,
    actor: str = "api",
    *,
    stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {"at": at.isoformat(), "action": action, "weight": weight, "reason": reason, "actor": actor} | (
        stats or {}
    )


def _check_policy(policy: CanaryPolicy) -> None:
    if not 0 < policy.canary < 100:
        raise InvalidRequest("canary is a percentage between 1 and 99", param="canary")
    if not 0 < policy.step <= 100:
        raise InvalidRequest("step is a percentage between 1 and 100", param="step")
    if policy.every <= 0:
        raise InvalidRequest("every is a duration above 0", param="every")
    if not 0 <= policy.max_error_rate <= 1:
        raise InvalidRequest("max_error_rate is between 0 % and 100 %", param="max_error_rate")
    if policy.min_samples < 1:
        raise InvalidRequest("min_samples is 1 or more", param="min_samples")
