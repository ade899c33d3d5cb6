"""OpenAI batches: a batch's row (status, timestamps, counts, files) and one row per request of its input
file. A request's outcome is written when it finishes, in the same transaction that counts it on the
batch, and only while the request is still ``pending``: recording one twice (a leader that hands over
mid-request) counts it once, and what a restarted leader reads back as pending is exactly what is left
to send.

A batch belongs to the key that created it (``key_id``; None: made without a key), as files do.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, func, select, update

from superollama.registry._base import Database
from superollama.registry.schema import batch_requests, batches

__all__ = [
    "ACTIVE",
    "FINISHED",
    "BatchRecord",
    "BatchRepository",
    "BatchRequestRecord",
    "Outcome",
]

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")  # a leader still has work to do
FINISHED = ("completed", "failed", "expired", "cancelled")
_STAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: str
    endpoint: str
    input_file_id: str
    expires_at: datetime
    completion_window: str = "24h"
    status: str = "validating"
    key_id: str | None = None
    key_prefix: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    errors: Sequence[Mapping[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    created_at: datetime | None = None
    in_progress_at: datetime | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    expired_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class BatchRequestRecord:
    line: int
    custom_id: str
    body: Mapping[str, Any]
    state: str = "pending"
    status_code: int | None = None
    request_id: str | None = None
    response: Any = None
    error: Mapping[str, Any] | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request ended: ``completed`` (a 2xx answer), ``failed`` (another answer, or none), or
    ``cancelled`` / ``expired`` (never sent). ``input_tokens``/``output_tokens``: the answer's usage."""

    state: str
    status_code: int | None = None
    request_id: str | None = None
    response: Any = None
    error: Mapping[str, Any] | None = None
    input_tokens: int = 0
    output_tokens: int = 0


def _owned(key_id: str | None) -> ColumnElement[bool]:
    col = batches.c.key_id
    return col.is_(None) if key_id is None else col == key_id


def _batch(row: Row[Any]) -> BatchRecord:
    m = dict(row._mapping)
    m["metadata"] = dict(m["metadata"] or {})
    return BatchRecord(**m)


def _request(row: Row[Any]) -> BatchRequestRecord:
    m = dict(row._mapping)
    m.pop("batch_id")
    return BatchRequestRecord(**m)


class BatchRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def now(self) -> datetime:
        return self._db.now()

    async def add(self, record: BatchRecord) -> BatchRecord:
        values: dict[str, Any] = {
            "id": record.id,
            "key_id": record.key_id,
            "key_prefix": record.key_prefix,
            "endpoint": record.endpoint,
            "input_file_id": record.input_file_id,
            "completion_window": record.completion_window,
            "status": record.status,
            "metadata": dict(record.metadata),
            "errors": None,
            "output_file_id": None,
            "error_file_id": None,
            "total": 0,
            "completed": 0,
            "failed": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "created_at": record.created_at or self._db.now(),
            "expires_at": record.expires_at,
            **dict.fromkeys(_STAMPS),
        }
        async with self._db.write("adding a batch") as conn:
            await conn.execute(batches.insert().values(values))
        return await self._get(record.id)

    async def find(self, batch_id: str, *, key_id: str | None) -> BatchRecord | None:
        """The key's batch (None: not there, or another key's)."""
        stmt = select(batches).where(batches.c.id == batch_id, _owned(key_id))
        async with self._db.read("reading a batch") as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else _batch(row)

    async def find_any(self, batch_id: str) -> BatchRecord | None:
        """The batch, whoever's it is (the runner's read)."""
        async with self._db.read("reading a batch") as conn:
            row = (await conn.execute(select(batches).where(batches.c.id == batch_id))).first()
        return None if row is None else _batch(row)

    async def _get(self, batch_id: str) -> BatchRecord:
        async with self._db.read("reading a batch") as conn:
            row = (await conn.execute(select(batches).where(batches.c.id == batch_id))).one()
        return _batch(row)

    async def list(
        self, *, key_id: str | None, limit: int = 20, after: str | None = None
    ) -> builtins.list[BatchRecord]:
        """The key's batches, newest first; ``after``: a cursor (a batch id of the previous page)."""
        stmt = select(batches).where(_owned(key_id))
        if after is not None:
            sub = select(batches.c.created_at).where(batches.c.id == after).scalar_subquery()
            created, ident = batches.c.created_at, batches.c.id
            stmt = stmt.where((created < sub) | ((created == sub) & (ident < after)))
        stmt = stmt.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(limit)
        async with self._db.read("listing batches") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_batch(r) for r in rows]

    async def active(self) -> builtins.list[BatchRecord]:
        """Every batch a leader still has work on, oldest first."""
        stmt = select(batches).where(batches.c.status.in_(ACTIVE)).order_by(batches.c.created_at)
        async with self._db.read("listing active batches") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_batch(r) for r in rows]

    async def move(
        self, batch_id: str, status: str, *, expect: Sequence[str], **fields: Any
    ) -> BatchRecord | None:
        """Set ``status`` (and its timestamp, ``<status>_at``, when it has one) and ``fields``, only from
        a status in ``expect``; the batch after, or None when it was in none of them."""
        values: dict[str, Any] = {"status": status, **fields}
        if f"{status}_at" in _STAMPS:
            values[f"{status}_at"] = self._db.now()
        stmt = (
            update(batches)
            .where(batches.c.id == batch_id, batches.c.status.in_(tuple(expect)))
            .values(values)
        )
        async with self._db.write("changing a batch's status") as conn:
            moved = (await conn.execute(stmt)).rowcount
        return await self._get(batch_id) if moved else None

    async def start(
        self, batch_id: str, requests: Sequence[tuple[int, str, Mapping[str, Any]]]
    ) -> BatchRecord | None:
        """A validated batch: its requests (line, custom_id, body), all pending, and ``in_progress`` —
        in one transaction, so a batch in progress always has all its requests. None unless it was
        ``validating`` (cancelled meanwhile, or another leader started it)."""
        now = self._db.now()
        async with self._db.write("starting a batch") as conn:
            moved = (
                await conn.execute(
                    update(batches)
                    .where(batches.c.id == batch_id, batches.c.status == "validating")
                    .values(status="in_progress", in_progress_at=now, total=len(requests))
                )
            ).rowcount
            if moved and requests:
                await conn.execute(
                    batch_requests.insert(),
                    [
                        {
                            "batch_id": batch_id,
                            "line": line,
                            "custom_id": custom_id,
                            "body": dict(body),
                            "state": "pending",
                            "status_code": None,
                            "request_id": None,
                            "response": None,
                            "error": None,
                            "finished_at": None,
                        }
                        for line, custom_id, body in requests
                    ],
                )
        return await self._get(batch_id) if moved else None

    async def pending(self, batch_id: str) -> builtins.list[BatchRequestRecord]:
        """The requests not finished yet, in line order."""
        stmt = (
            select(batch_requests)
            .where(batch_requests.c.batch_id == batch_id, batch_requests.c.state == "pending")
            .order_by(batch_requests.c.line)
        )
        async with self._db.read("reading a batch's pending requests") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_request(r) for r in rows]

    async def requests(self, batch_id: str) -> builtins.list[BatchRequestRecord]:
        """Every request of the batch, in line order (what its output and error files are made of)."""
        stmt = (
            select(batch_requests)
            .where(batch_requests.c.batch_id == batch_id)
            .order_by(batch_requests.c.line)
        )
        async with self._db.read("reading a batch's requests") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_request(r) for r in rows]

    async def record(self, batch_id: str, line: int, outcome: Outcome) -> bool:
        """Write how request ``line`` ended and count it on the batch, if it was still pending (True)."""
        now = self._db.now()
        async with self._db.write("recording a batch request") as conn:
            done = (
                await conn.execute(
                    update(batch_requests)
                    .where(
                        batch_requests.c.batch_id == batch_id,
                        batch_requests.c.line == line,
                        batch_requests.c.state == "pending",
                    )
                    .values(
                        state=outcome.state,
                        status_code=outcome.status_code,
                        request_id=outcome.request_id,
                        response=outcome.response,
                        error=None if outcome.error is None else dict(outcome.error),
                        finished_at=now,
                    )
                )
            ).rowcount
            if done:
                counts: dict[str, Any] = {
                    "input_tokens": batches.c.input_tokens + outcome.input_tokens,
                    "output_tokens": batches.c.output_tokens + outcome.output_tokens,
                }
                if outcome.state in ("completed", "failed"):
                    counts[outcome.state] = batches.c[outcome.state] + 1
                await conn.execute(update(batches).where(batches.c.id == batch_id).values(counts))
        return bool(done)

    async def close_pending(self, batch_id: str, state: str, error: Mapping[str, Any]) -> int:
        """End every pending request unsent (``cancelled`` or ``expired``, with ``error``); how many."""
        stmt = (
            update(batch_requests)
            .where(batch_requests.c.batch_id == batch_id, batch_requests.c.state == "pending")
            .values(state=state, error=dict(error), finished_at=self._db.now())
        )
        async with self._db.write("closing a batch's pending requests") as conn:
            return int((await conn.execute(stmt)).rowcount)

    async def states(self, batch_id: str) -> dict[str, int]:
        """How many requests of the batch are in each state."""
        stmt = (
            select(batch_requests.c.state, func.count())
            .where(batch_requests.c.batch_id == batch_id)
            .group_by(batch_requests.c.state)
        )
        async with self._db.read("counting a batch's requests") as conn:
            rows = (await conn.execute(stmt)).all()
        return {str(state): int(n) for state, n in rows}
