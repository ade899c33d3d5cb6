"""Fine-tuning jobs, their events and checkpoints (migration 15).

A job belongs to the key that created it (``key_id``; None: made without a key): to another key it does
not exist, like a file. The leader that runs a job writes its status here at every change, so a restarted
leader finds the jobs to resume (``unfinished``) and the checkpoints to resume them from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.sql.elements import ColumnElement

from superollama.registry._base import Database, plain
from superollama.registry.schema import fine_tuning_checkpoints, fine_tuning_events, fine_tuning_jobs

__all__ = [
    "FINAL_STATUSES",
    "CheckpointRecord",
    "FineTuneEvent",
    "FineTuneRecord",
    "FineTuneRepository",
]

FINAL_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class FineTuneRecord:
    id: str
    model: str
    training_file: str
    hyperparameters: Mapping[str, Any]
    seed: int
    status: str = "validating_files"
    key_id: str | None = None
    validation_file: str | None = None
    suffix: str | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FineTuneEvent:
    id: int
    job_id: str
    created_at: datetime
    level: str
    type: str
    message: str
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    id: str
    job_id: str
    step: int
    metrics: Mapping[str, Any]
    path: str
    created_at: datetime | None = None


def _owned(key_id: str | None) -> ColumnElement[bool]:
    col = fine_tuning_jobs.c.key_id
    return col.is_(None) if key_id is None else col == key_id


class FineTuneRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: FineTuneRecord) -> FineTuneRecord:
        values: dict[str, Any] = {
            "id": record.id,
            "key_id": record.key_id,
            "model": record.model,
            "training_file": record.training_file,
            "validation_file": record.validation_file,
            "suffix": record.suffix,
            "seed": record.seed,
            "hyperparameters": plain(record.hyperparameters),
            "status": record.status,
            "fine_tuned_model": None,
            "trained_tokens": None,
            "error": None,
            "metadata": plain(record.metadata),
            "created_at": self._db.now(),
            "finished_at": None,
        }
        async with self._db.write("adding a fine-tuning job") as conn:
            await conn.execute(fine_tuning_jobs.insert().values(values))
        return FineTuneRecord(**values)

    async def get(
        self, job_id: str, *, key_id: str | None = None, any_key: bool = False
    ) -> FineTuneRecord | None:
        """The job ``job_id`` of ``key_id``; ``any_key``: whoever owns it (the leader running it)."""
        stmt = select(fine_tuning_jobs).where(fine_tuning_jobs.c.id == job_id)
        if not any_key:
            stmt = stmt.where(_owned(key_id))
        async with self._db.read("reading a fine-tuning job") as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else FineTuneRecord(**row._mapping)

    async def jobs(
        self, *, key_id: str | None, after: str | None = None, limit: int = 20
    ) -> list[FineTuneRecord]:
        """Newest first; ``after``: the jobs created before that one (OpenAI's cursor)."""
        t = fine_tuning_jobs
        stmt = select(t).where(_owned(key_id))
        if after is not None:
            sub = select(t.c.created_at).where(t.c.id == after).scalar_subquery()
            stmt = stmt.where((t.c.created_at < sub) | ((t.c.created_at == sub) & (t.c.id < after)))
        stmt = stmt.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
        async with self._db.read("listing fine-tuning jobs") as conn:
            rows = (await conn.execute(stmt)).all()
        return [FineTuneRecord(**r._mapping) for r in rows]

    async def unfinished(self) -> list[FineTuneRecord]:
        """Every job not in a final status, oldest first: what a (new) leader runs or resumes."""
        t = fine_tuning_jobs
        stmt = select(t).where(t.c.status.not_in(FINAL_STATUSES)).order_by(t.c.created_at, t.c.id)
        async with self._db.read("listing unfinished fine-tuning jobs") as conn:
            rows = (await conn.execute(stmt)).all()
        return [FineTuneRecord(**r._mapping) for r in rows]

    async def update(self, job_id: str, **values: Any) -> bool:
        """Set columns of a job that has not ended; False when it had (a final status is never left)."""
        if values.get("status") in FINAL_STATUSES:
            values.setdefault("finished_at", self._db.now())
        for key in ("error", "hyperparameters", "metadata"):
            if isinstance(values.get(key), Mapping):
                values[key] = plain(values[key])
        t = fine_tuning_jobs
        stmt = update(t).where(t.c.id == job_id, t.c.status.not_in(FINAL_STATUSES)).values(**values)
        async with self._db.write("updating a fine-tuning job") as conn:
            return bool((await conn.execute(stmt)).rowcount)

    # -- events ---------------------------------------------------------------------------------------
    async def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: Mapping[str, Any] | None = None,
    ) -> FineTuneEvent:
        values: dict[str, Any] = {
            "job_id": job_id,
            "created_at": self._db.now(),
            "level": level,
            "type": type,
            "message": message,
            "data": None if data is None else plain(data),
        }
        async with self._db.write("adding a fine-tuning event") as conn:
            result = await conn.execute(fine_tuning_events.insert().values(values))
            event_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        return FineTuneEvent(id=event_id, **values)

    async def events(self, job_id: str, *, after: int | None = None, limit: int = 20) -> list[FineTuneEvent]:
        """Newest first (as OpenAI lists them); ``after``: the events older than that one."""
        t = fine_tuning_events
        stmt = select(t).where(t.c.job_id == job_id)
        if after is not None:
            stmt = stmt.where(t.c.id < after)
        stmt = stmt.order_by(t.c.id.desc()).limit(limit)
        async with self._db.read("listing fine-tuning events") as conn:
            rows = (await conn.execute(stmt)).all()
        return [FineTuneEvent(**r._mapping) for r in rows]

    # -- checkpoints ----------------------------------------------------------------------------------
    async def add_checkpoint(self, record: CheckpointRecord) -> CheckpointRecord:
        values: dict[str, Any] = {
            "id": record.id,
            "job_id": record.job_id,
            "step": record.step,
            "metrics": plain(record.metrics),
            "path": record.path,
            "created_at": self._db.now(),
        }
        async with self._db.write("adding a fine-tuning checkpoint") as conn:
            await conn.execute(fine_tuning_checkpoints.insert().values(values))
        return CheckpointRecord(**values)

    async def checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int = 10
    ) -> list[CheckpointRecord]:
        """Newest (highest step) first; ``after``: the checkpoints before that one."""
        t = fine_tuning_checkpoints
        stmt = select(t).where(t.c.job_id == job_id)
        if after is not None:
            sub = select(t.c.step).where(t.c.id == after).scalar_subquery()
            stmt = stmt.where(t.c.step < sub)
        stmt = stmt.order_by(t.c.step.desc()).limit(limit)
        async with self._db.read("listing fine-tuning checkpoints") as conn:
            rows = (await conn.execute(stmt)).all()
        return [CheckpointRecord(**r._mapping) for r in rows]
