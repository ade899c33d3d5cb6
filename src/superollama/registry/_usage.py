"""The usage ledger's rows: one per finished request, written in batches by ``telemetry.UsageLedger``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, select

from superollama.core import RequestRecord
from superollama.registry._base import Database
from superollama.registry.schema import usage

__all__ = ["UsageRepository"]


def _values(r: RequestRecord) -> dict[str, Any]:
    return {
        "created_at": datetime.fromtimestamp(r.started_at, UTC),
        "request_id": r.request_id,
        "key_id": r.key_id,
        "key_prefix": r.key_prefix,
        "protocol": r.protocol,
        "operation": r.operation,
        "model": r.model,
        "version": r.version,
        "instance": r.instance,
        "connection": r.connection,
        "node": r.node,
        "status": r.status,
        "stream": r.stream,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "ttft": r.ttft,
        "load_wait": r.load_wait,
        "latency": r.duration,
        "cost": r.cost,
        "error_type": r.error_type,
    }


def _record(row: Row[Any]) -> RequestRecord:
    m = row._mapping
    return RequestRecord(
        request_id=m["request_id"],
        protocol=m["protocol"],
        operation=m["operation"],
        model=m["model"],
        status=m["status"],
        started_at=m["created_at"].timestamp(),
        duration=m["latency"],
        stream=bool(m["stream"]),
        key_id=m["key_id"],
        key_prefix=m["key_prefix"],
        version=m["version"],
        instance=m["instance"],
        connection=m["connection"],
        node=m["node"],
        ttft=m["ttft"],
        load_wait=m["load_wait"],
        prompt_tokens=m["prompt_tokens"],
        completion_tokens=m["completion_tokens"],
        cost=m["cost"],
        error_type=m["error_type"],
    )


class UsageRepository:
    """Append-only ledger rows, read back by time window. Captured content is never stored."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert_many(self, records: Sequence[RequestRecord]) -> int:
        """Write a batch in one transaction; returns how many rows."""
        if not records:
            return 0
        async with self._db.write("recording usage") as conn:
            await conn.execute(usage.insert(), [_values(r) for r in records])
        return len(records)

    async def query(self, *, since: datetime, until: datetime | None = None) -> list[RequestRecord]:
        """Rows that started in ``[since, until)``, oldest first."""
        stmt = select(usage).where(usage.c.created_at >= since).order_by(usage.c.created_at, usage.c.id)
        if until is not None:
            stmt = stmt.where(usage.c.created_at < until)
        async with self._db.read("reading usage") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]
