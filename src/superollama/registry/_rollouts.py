"""Rollouts, the per-target window stats every gateway process reports, and shadow comparisons.

``RolloutRepository``: one row per deployment stage — the running rollout, or the last one that ended.
``WindowRepository``: each gateway process upserts one row per (deployment, target) with its sliding
window's counts; ``collect`` sums the rows reported recently (a process that stopped reporting drops out
of the sum once its row is older than ``fresh`` seconds). ``ShadowRepository``: comparison samples,
with aggregates and the last N; old samples are pruned beyond ``keep`` per deployment.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Row, and_, case, delete, func, select

from superollama.core.canary import BUCKETS, CanaryPolicy, WindowStats
from superollama.core.deployments import RolloutRecord, ShadowSample
from superollama.errors import NotFound
from superollama.registry._base import Database
from superollama.registry.schema import rollouts, shadow_samples, target_windows

__all__ = ["RolloutRepository", "ShadowRepository", "WindowRepository"]


def _rollout(row: Row[Any]) -> RolloutRecord:
    m = row._mapping
    return RolloutRecord(
        name=m["name"],
        stage=m["stage"],
        state=m["state"],
        stable=m["stable"],
        target=m["target"],
        weight=int(m["weight"]),
        policy=CanaryPolicy.from_json(dict(m["policy"] or {})),
        decisions=tuple(m["decisions"] or ()),
        next_at=m["next_at"],
        started_at=m["started_at"],
        updated_at=m["updated_at"],
    )


def _key(name: str, stage: str) -> Any:
    return (rollouts.c.name == name) & (rollouts.c.stage == stage)


class RolloutRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def find(self, name: str, stage: str) -> RolloutRecord | None:
        async with self._db.read("reading a rollout") as conn:
            row = (await conn.execute(select(rollouts).where(_key(name, stage)))).first()
        return None if row is None else _rollout(row)

    async def get(self, name: str, stage: str) -> RolloutRecord:
        record = await self.find(name, stage)
        if record is None:
            shown = name if stage == "production" else f"{name}@{stage}"
            raise NotFound(f"deployment {shown!r} has no rollout", param="name")
        return record

    async def running(self) -> list[RolloutRecord]:
        async with self._db.read("listing running rollouts") as conn:
            rows = (await conn.execute(select(rollouts).where(rollouts.c.state == "running"))).all()
        return [_rollout(r) for r in rows]

    async def put(self, record: RolloutRecord) -> RolloutRecord:
        """Create or replace the stage's rollout (all columns; ``started_at`` kept when it has one)."""
        now = self._db.now()
        values = {
            "name": record.name,
            "stage": record.stage,
            "state": record.state,
            "stable": record.stable,
            "target": record.target,
            "weight": record.weight,
            "policy": record.policy.as_json(),
            "decisions": list(record.decisions),
            "next_at": record.next_at,
            "started_at": record.started_at or now,
            "updated_at": now,
        }
        changed = [k for k in values if k not in ("name", "stage")]
        stmt = self._db.upsert(rollouts, values, ["name", "stage"], changed)
        async with self._db.write("saving a rollout") as conn:
            await conn.execute(stmt)
        return await self.get(record.name, record.stage)

    async def delete(self, name: str, stage: str) -> None:
        async with self._db.write("deleting a rollout") as conn:
            await conn.execute(delete(rollouts).where(_key(name, stage)))


class WindowRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def report(self, reporter: str, rows: Sequence[tuple[str, str, WindowStats, int]]) -> None:
        """This process's window per (deployment, target), with its count of dropped shadow copies."""
        if not rows:
            return
        now = self._db.now()
        async with self._db.write("reporting target windows") as conn:
            for deployment, target, stats, dropped in rows:
                values = {
                    "reporter": reporter,
                    "deployment": deployment,
                    "target": target,
                    "count": stats.count,
                    "errors": stats.errors,
                    "buckets": _sparse(stats.buckets),
                    "dropped": dropped,
                    "reported_at": now,
                }
                stmt = self._db.upsert(
                    target_windows,
                    values,
                    ["reporter", "deployment", "target"],
                    ["count", "errors", "buckets", "dropped", "reported_at"],
                )
                await conn.execute(stmt)

    async def collect(self, deployment: str, *, fresh: float) -> dict[str, tuple[WindowStats, int, int]]:
        """Per target of ``deployment``: the sum of every process's fresh window, the shadow copies they
        dropped, and how many processes reported."""
        since = self._db.now() - timedelta(seconds=fresh)
        t = target_windows
        stmt = select(t).where((t.c.deployment == deployment) & (t.c.reported_at >= since))
        async with self._db.read("reading target windows") as conn:
            rows = (await conn.execute(stmt)).all()
        parts: dict[str, list[WindowStats]] = {}
        dropped: dict[str, int] = {}
        for r in rows:
            m = r._mapping
            parts.setdefault(m["target"], []).append(
                WindowStats(int(m["count"]), int(m["errors"]), _dense(m["buckets"]))
            )
            dropped[m["target"]] = dropped.get(m["target"], 0) + int(m["dropped"])
        return {k: (WindowStats.merge(v), dropped[k], len(v)) for k, v in parts.items()}

    async def prune(self, *, older_than: float) -> int:
        before = self._db.now() - timedelta(seconds=older_than)
        async with self._db.write("pruning target windows") as conn:
            result = await conn.execute(delete(target_windows).where(target_windows.c.reported_at < before))
        return int(result.rowcount or 0)


def _sparse(buckets: Sequence[int]) -> dict[str, int]:
    return {str(i): n for i, n in enumerate(buckets) if n}


def _dense(data: Any) -> tuple[int, ...]:
    out = [0] * BUCKETS
    for k, v in dict(data or {}).items():
        i = int(k)
        if 0 <= i < BUCKETS:
            out[i] = int(v)
    return tuple(out)


class ShadowRepository:
    def __init__(self, db: Database, *, keep: int = 1000) -> None:
        self._db = db
        self._keep = keep

    async def add(self, samples: Sequence[ShadowSample]) -> None:
        if not samples:
            return
        now = self._db.now()
        rows = [
            {
                "deployment": s.deployment,
                "target": s.target,
                "primary_target": s.primary_target,
                "at": s.at or now,
                "primary_latency": s.primary_latency,
                "shadow_latency": s.shadow_latency,
                "primary_length": s.primary_length,
                "shadow_length": s.shadow_length,
                "exact": s.exact,
                "similarity": s.similarity,
                "error": s.error,
            }
            for s in samples
        ]
        h = shadow_samples
        async with self._db.write("saving shadow comparisons") as conn:
            await conn.execute(h.insert(), rows)
            for deployment in {s.deployment for s in samples}:
                cutoff = (
                    select(h.c.id)
                    .where(h.c.deployment == deployment)
                    .order_by(h.c.id.desc())
                    .offset(self._keep)
                    .limit(1)
                    .scalar_subquery()
                )
                await conn.execute(delete(h).where(and_(h.c.deployment == deployment, h.c.id <= cutoff)))

    async def summary(self, deployment: str, *, last: int = 10) -> dict[str, Any]:
        """Aggregates over the kept samples, and the ``last`` ones (newest first)."""
        h = shadow_samples
        ok = h.c.error.is_(None)
        agg = select(
            func.count(),
            func.sum(case((ok, 1), else_=0)),
            func.sum(case((h.c.exact, 1), else_=0)),
            func.avg(h.c.primary_latency),
            func.avg(case((ok, h.c.shadow_latency), else_=None)),
            func.avg(h.c.primary_length),
            func.avg(case((ok, h.c.shadow_length), else_=None)),
            func.avg(h.c.similarity),
        ).where(h.c.deployment == deployment)
        recent = select(h).where(h.c.deployment == deployment).order_by(h.c.id.desc()).limit(last)
        async with self._db.read("reading shadow comparisons") as conn:
            row = (await conn.execute(agg)).one()
            rows = (await conn.execute(recent)).all()
        n, answered, exact, p_lat, s_lat, p_len, s_len, sim = row
        return {
            "samples": int(n or 0),
            "failed": int((n or 0) - (answered or 0)),
            "exact_match_rate": round(float(exact or 0) / n, 4) if n else None,
            "primary_latency_ms": _ms(p_lat),
            "shadow_latency_ms": _ms(s_lat),
            "primary_length": _round(p_len),
            "shadow_length": _round(s_len),
            "similarity": _round(sim, 4),
            "last": [_sample(r).as_json() for r in rows],
        }

    async def list(self, deployment: str, *, last: int = 10) -> builtins.list[ShadowSample]:
        h = shadow_samples
        stmt = select(h).where(h.c.deployment == deployment).order_by(h.c.id.desc()).limit(last)
        async with self._db.read("reading shadow comparisons") as conn:
            return [_sample(r) for r in (await conn.execute(stmt)).all()]


def _sample(row: Row[Any]) -> ShadowSample:
    m = row._mapping
    return ShadowSample(
        deployment=m["deployment"],
        target=m["target"],
        primary_target=m["primary_target"],
        primary_latency=float(m["primary_latency"]),
        shadow_latency=None if m["shadow_latency"] is None else float(m["shadow_latency"]),
        primary_length=int(m["primary_length"]),
        shadow_length=None if m["shadow_length"] is None else int(m["shadow_length"]),
        exact=bool(m["exact"]),
        similarity=None if m["similarity"] is None else float(m["similarity"]),
        error=m["error"],
        at=m["at"],
    )


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value) * 1000, 1)


def _round(value: Any, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)
