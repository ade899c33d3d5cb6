"""Deployments: the current target set of each stage, and the sets it had before (for rollback).

``put`` writes a stage's new target set and, in the same transaction, keeps the one it replaces as
history; ``rollback`` makes the newest history entry current again and forgets it (so a second rollback
goes one step further back). Missing rows are ``NotFound``.
"""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import Row, delete, select, update

from superollama.core.deployments import (
    DeploymentRecord,
    HistoryEntry,
    VersionScale,
    targets_from_json,
    targets_json,
)
from superollama.core.placement import PlacementConstraint
from superollama.errors import NotFound
from superollama.registry._base import Database
from superollama.registry.engine import AsyncConnection
from superollama.registry.schema import deployment_history, deployments, version_placements

__all__ = ["DeploymentRepository", "VersionScaleRepository"]


def _record(row: Row[Any]) -> DeploymentRecord:
    m = row._mapping
    return DeploymentRecord(
        name=m["name"],
        stage=m["stage"],
        targets=targets_from_json(m["targets"] or ()),
        sticky=m["sticky"],
        enabled=bool(m["enabled"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def _missing(name: str, stage: str) -> NotFound:
    shown = name if stage == "production" else f"{name}@{stage}"
    return NotFound(f"deployment {shown!r} not found", param="name")


def _key(name: str, stage: str) -> Any:
    return (deployments.c.name == name) & (deployments.c.stage == stage)


class DeploymentRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(self) -> list[DeploymentRecord]:
        async with self._db.read("listing deployments") as conn:
            rows = (
                await conn.execute(select(deployments).order_by(deployments.c.name, deployments.c.stage))
            ).all()
        return [_record(r) for r in rows]

    async def find(self, name: str, stage: str = "production") -> DeploymentRecord | None:
        async with self._db.read("reading a deployment") as conn:
            row = (await conn.execute(select(deployments).where(_key(name, stage)))).first()
        return None if row is None else _record(row)

    async def get(self, name: str, stage: str = "production") -> DeploymentRecord:
        record = await self.find(name, stage)
        if record is None:
            raise _missing(name, stage)
        return record

    async def put(self, record: DeploymentRecord) -> DeploymentRecord:
        """Create the stage, or replace its targets and stickiness (the old set goes to history when it
        differs). ``enabled`` is kept for an existing stage (pause and resume change it)."""
        now = self._db.now()
        async with self._db.write("saving a deployment", change="deployments") as conn:
            old = (await conn.execute(select(deployments).where(_key(record.name, record.stage)))).first()
            if old is None:
                values = {
                    "name": record.name,
                    "stage": record.stage,
                    "targets": targets_json(record.targets),
                    "sticky": record.sticky,
                    "enabled": record.enabled,
                    "created_at": now,
                    "updated_at": now,
                }
                row = (
                    await conn.execute(deployments.insert().values(values).returning(*deployments.c))
                ).one()
                return _record(row)
            before = _record(old)
            if before.targets == record.targets and before.sticky == record.sticky:
                return before
            await self._remember(conn, before)
            row = (
                await conn.execute(
                    update(deployments)
                    .where(_key(record.name, record.stage))
                    .values(targets=targets_json(record.targets), sticky=record.sticky, updated_at=now)
                    .returning(*deployments.c)
                )
            ).one()
        return _record(row)

    async def _remember(self, conn: AsyncConnection, before: DeploymentRecord) -> None:
        await conn.execute(
            deployment_history.insert().values(
                name=before.name,
                stage=before.stage,
                targets=targets_json(before.targets),
                sticky=before.sticky,
                replaced_at=self._db.now(),
            )
        )

    async def history(self, name: str, stage: str = "production") -> builtins.list[HistoryEntry]:
        """The target sets the stage had, newest first."""
        h = deployment_history
        stmt = select(h).where((h.c.name == name) & (h.c.stage == stage)).order_by(h.c.id.desc())
        async with self._db.read("reading a deployment's history") as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            HistoryEntry(
                int(r._mapping["id"]),
                targets_from_json(r._mapping["targets"] or ()),
                r._mapping["sticky"],
                r._mapping["replaced_at"],
            )
            for r in rows
        ]

    async def rollback(self, name: str, stage: str = "production") -> DeploymentRecord:
        """Make the newest history entry current again (and drop it); ``NotFound`` with no history."""
        h = deployment_history
        async with self._db.write("rolling a deployment back", change="deployments") as conn:
            entry = (
                await conn.execute(
                    select(h)
                    .where((h.c.name == name) & (h.c.stage == stage))
                    .order_by(h.c.id.desc())
                    .limit(1)
                )
            ).first()
            if entry is None:
                current = (await conn.execute(select(deployments).where(_key(name, stage)))).first()
                if current is None:
                    raise _missing(name, stage)
                shown = name if stage == "production" else f"{name}@{stage}"
                raise NotFound(
                    f"deployment {shown!r} has no earlier target set to roll back to", param="name"
                )
            m = entry._mapping
            row = (
                await conn.execute(
                    update(deployments)
                    .where(_key(name, stage))
                    .values(targets=m["targets"], sticky=m["sticky"], updated_at=self._db.now())
                    .returning(*deployments.c)
                )
            ).first()
            if row is None:
                raise _missing(name, stage)
            await conn.execute(delete(h).where(h.c.id == m["id"]))
        return _record(row)

    async def set_enabled(self, name: str, stage: str, enabled: bool) -> DeploymentRecord:
        stmt = (
            update(deployments)
            .where(_key(name, stage))
            .values(enabled=enabled, updated_at=self._db.now())
            .returning(*deployments.c)
        )
        async with self._db.write("pausing or resuming a deployment", change="deployments") as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise _missing(name, stage)
        return _record(row)

    async def delete(self, name: str, stage: str = "production") -> None:
        """Remove a stage and its history."""
        h = deployment_history
        async with self._db.write("deleting a deployment", change="deployments") as conn:
            result = await conn.execute(delete(deployments).where(_key(name, stage)))
            await conn.execute(delete(h).where((h.c.name == name) & (h.c.stage == stage)))
        if result.rowcount == 0:
            raise _missing(name, stage)


class VersionScaleRepository:
    """Versions scaled by themselves (``scale VERSION --replicas N …``): one row per version; a version
    back to one instance anywhere has no row."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(self) -> builtins.list[VersionScale]:
        t = version_placements
        async with self._db.read("listing version placements") as conn:
            rows = (await conn.execute(select(t).order_by(t.c.version))).all()
        return [_scale(r) for r in rows]

    async def find(self, version: str) -> VersionScale | None:
        t = version_placements
        async with self._db.read("reading a version's placement") as conn:
            row = (await conn.execute(select(t).where(t.c.version == version))).first()
        return None if row is None else _scale(row)

    async def put(self, scale: VersionScale) -> VersionScale | None:
        """Write the version's setting; one instance with no constraint deletes the row (None)."""
        t = version_placements
        if scale.replicas == 1 and scale.placement.empty:
            await self.delete(scale.version)
            return None
        values = {
            "version": scale.version,
            "replicas": scale.replicas,
            "placement": scale.placement.as_json(),
            "updated_at": self._db.now(),
        }
        stmt = self._db.upsert(t, values, ["version"], ["replicas", "placement", "updated_at"])
        async with self._db.write("saving a version's placement", change="deployments") as conn:
            row = (await conn.execute(stmt.returning(*t.c))).one()
        return _scale(row)

    async def delete(self, version: str) -> bool:
        t = version_placements
        async with self._db.write("deleting a version's placement", change="deployments") as conn:
            result = await conn.execute(delete(t).where(t.c.version == version))
        return bool(result.rowcount)


def _scale(row: Row[Any]) -> VersionScale:
    m = row._mapping
    return VersionScale(
        version=m["version"],
        replicas=int(m["replicas"]),
        placement=PlacementConstraint.from_json(m["placement"]),
        updated_at=m["updated_at"],
    )
