"""Several gateways on one registry: the generations of what they hold in memory, and who is alive.

``generations`` has one row per kind of change (``CHANGE_KINDS``) plus ``all``; ``Database.write`` bumps
them in the transaction of every change, so a gateway that reads a generation newer than the one it applied
knows exactly what to reload. ``gateways`` has one heartbeat row per running ``serve``. On Postgres a
gateway is alive while the database session that holds (or waits for) the leader lock is connected (its
backend pid is in ``pg_stat_activity``: a killed process is dead at once) and its heartbeat is recent; on
SQLite, while its heartbeat is recent.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, delete, select, text, update

from superollama.core import JobRecord, JobState
from superollama.registry._base import Database
from superollama.registry.schema import gateways, generations, jobs

__all__ = ["ClusterRepository", "GatewayRecord"]


@dataclass(frozen=True)
class GatewayRecord:
    """A ``superollama serve`` sharing this registry, as its heartbeat row says."""

    id: str
    host: str
    pid: int
    url: str | None = None
    session: int | None = None  # Postgres backend pid of its leader-lock connection
    generation: int = 0  # the "all" generation whose changes it has applied
    leader: bool = False
    started_at: datetime | None = None
    seen_at: datetime | None = None
    alive: bool = True


def _gateway(row: Row[Any], alive: bool) -> GatewayRecord:
    m = row._mapping
    return GatewayRecord(
        id=m["id"],
        host=m["host"],
        pid=m["pid"],
        url=m["url"],
        session=m["session"],
        generation=m["generation"],
        leader=m["leader"],
        started_at=m["started_at"],
        seen_at=m["seen_at"],
        alive=alive,
    )


class ClusterRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        kept = ["host", "pid", "url", "session", "generation", "leader", "seen_at"]
        self._beat = db.upsert_template(gateways, ["id"], kept)  # every second: built once

    async def generations(self) -> dict[str, int]:
        """Every generation by name (``all`` and each of ``CHANGE_KINDS``)."""
        async with self._db.read("reading the generations") as conn:
            rows = (await conn.execute(select(generations.c.name, generations.c.value))).all()
        return {str(name): int(value) for name, value in rows}

    async def heartbeat(self, record: GatewayRecord) -> None:
        """Insert or refresh this gateway's row (``seen_at`` = now)."""
        now = self._db.now()
        values = {
            "id": record.id,
            "host": record.host,
            "pid": record.pid,
            "url": record.url,
            "session": record.session,
            "generation": record.generation,
            "leader": record.leader,
            "started_at": record.started_at or now,
            "seen_at": now,
        }
        async with self._db.write("recording a gateway's heartbeat") as conn:
            await conn.execute(self._beat, values)

    async def remove(self, gateway_id: str) -> None:
        async with self._db.write("removing a gateway") as conn:
            await conn.execute(delete(gateways).where(gateways.c.id == gateway_id))

    async def list(self, *, stale: float) -> list[GatewayRecord]:
        """Every gateway row, ``alive`` computed (see the module's docstring); ``stale``: seconds without a
        heartbeat after which a gateway is dead."""
        cutoff = self._db.now() - timedelta(seconds=stale)
        async with self._db.read("listing gateways") as conn:
            rows = (await conn.execute(select(gateways).order_by(gateways.c.id))).all()
            sessions: set[int] | None = None
            if self._db.dialect == "postgresql":
                pids = await conn.execute(text("SELECT pid FROM pg_stat_activity"))
                sessions = {int(pid) for (pid,) in pids.all()}
        out = []
        for row in rows:
            m = row._mapping
            fresh = m["seen_at"] is not None and m["seen_at"] >= cutoff
            connected = sessions is None or (m["session"] is not None and m["session"] in sessions)
            out.append(_gateway(row, fresh and connected))
        return out

    async def forget_dead(self, *, stale: float, older_than: float) -> int:
        """Delete the rows of gateways not heard from for ``older_than`` seconds; returns how many."""
        cutoff = self._db.now() - timedelta(seconds=max(stale, older_than))
        async with self._db.write("forgetting dead gateways") as conn:
            result = await conn.execute(delete(gateways).where(gateways.c.seen_at < cutoff))
        return int(result.rowcount or 0)

    async def end_orphan_jobs(
        self, alive: Collection[str], error: Callable[[str | None], str], *, owner: str | None = None
    ) -> builtins.list[JobRecord]:
        """Mark ``failed`` every job left ``running`` by a gateway not in ``alive`` (or by a server older
        than the change feed: no owner), with ``error(owner)`` as the reason; returns them, ended.
        ``owner``: only the jobs of that gateway, whatever ``alive`` says (it restarted)."""
        now = self._db.now()
        whose = (
            jobs.c.owner == owner
            if owner is not None
            else jobs.c.owner.is_(None) | jobs.c.owner.not_in(list(alive))
        )
        cond = (jobs.c.state == str(JobState.RUNNING)) & whose
        ended: builtins.list[JobRecord] = []
        async with self._db.write("ending the jobs of dead gateways") as conn:
            rows = (await conn.execute(select(jobs).where(cond).with_for_update())).all()
            for row in rows:
                m = row._mapping
                reason = error(m["owner"])
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == m["id"])
                    .values(state=str(JobState.FAILED), error=reason, updated_at=now)
                )
                ended.append(
                    JobRecord(
                        id=m["id"],
                        kind=m["kind"],
                        target=m["target"],
                        state=JobState.FAILED,
                        actor=m["actor"],
                        params=dict(m["params"] or {}),
                        progress=dict(m["progress"] or {}),
                        error=reason,
                        created_at=m["created_at"],
                        updated_at=now,
                    )
                )
        return ended
