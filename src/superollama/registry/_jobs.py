"""Long operations (jobs): recorded when they start, updated as they progress, closed with a result."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Row, select, update

from superollama.core import JobRecord, JobState
from superollama.errors import NotFound
from superollama.registry._base import Database, plain
from superollama.registry.schema import jobs

__all__ = ["JobRepository"]


def _record(row: Row[Any]) -> JobRecord:
    m = row._mapping
    return JobRecord(
        id=m["id"],
        kind=m["kind"],
        target=m["target"],
        state=JobState(m["state"]),
        actor=m["actor"],
        params=dict(m["params"] or {}),
        progress=dict(m["progress"] or {}),
        result=dict(m["result"] or {}),
        error=m["error"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


class JobRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: JobRecord, *, owner: str | None = None) -> JobRecord:
        """Record a job; ``owner``: the gateway that runs it (the leader ends it if that gateway dies)."""
        now = self._db.now()
        values = {
            "id": record.id,
            "kind": record.kind,
            "target": record.target,
            "state": str(record.state),
            "actor": record.actor,
            "params": plain(record.params),
            "progress": plain(record.progress),
            "result": plain(record.result),
            "error": record.error,
            "created_at": record.created_at or now,
            "updated_at": now,
            "owner": owner,
        }
        async with self._db.write("recording a job") as conn:
            row = (await conn.execute(jobs.insert().values(values).returning(*jobs.c))).one()
        return _record(row)

    async def find(self, job_id: str) -> JobRecord | None:
        async with self._db.read("reading a job") as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return _record(row) if row is not None else None

    async def get(self, job_id: str) -> JobRecord:
        record = await self.find(job_id)
        if record is None:
            raise NotFound(f"job {job_id!r} not found", param="id")
        return record

    async def list(self, *, states: Iterable[JobState] | None = None, limit: int = 100) -> list[JobRecord]:
        stmt = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id).limit(max(0, limit))
        if states is not None:
            stmt = stmt.where(jobs.c.state.in_([str(s) for s in states]))
        async with self._db.read("listing jobs") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]

    async def update(
        self,
        job_id: str,
        *,
        state: JobState | None = None,
        progress: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> JobRecord:
        values: dict[str, Any] = {"updated_at": self._db.now()}
        if state is not None:
            values["state"] = str(state)
        if progress is not None:
            values["progress"] = plain(progress)
        if result is not None:
            values["result"] = plain(result)
        if error is not None:
            values["error"] = error
        stmt = update(jobs).where(jobs.c.id == job_id).values(values).returning(*jobs.c)
        async with self._db.write("updating a job") as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise NotFound(f"job {job_id!r} not found", param="id")
        return _record(row)
