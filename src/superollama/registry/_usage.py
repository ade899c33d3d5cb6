"""The usage ledger's rows: one per finished request, written in batches by ``telemetry.UsageLedger``."""

from __future__ import annotations

import asyncio
import functools
import itertools
import operator
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Boolean, Float, Integer, Row, String, select

from superollama.core import RequestRecord
from superollama.registry._base import Database
from superollama.registry.schema import usage

__all__ = ["UsageRepository"]


_COLUMNS = [c.name for c in usage.columns if c.name != "id"]
# the record's attribute for each column, in order (``created_at`` is given as epoch seconds)
_ATTRIBUTES = {"created_at": "started_at", "latency": "duration"}
_fields = operator.attrgetter(*(_ATTRIBUTES.get(name, name) for name in _COLUMNS))
# SQLite: rows per INSERT; the driver binds their 2,200 parameters holding the GIL (~0.2 ms)
_SQLITE_ROWS = 100
# Postgres: rows made JSON per turn of the event loop (~1 µs a row)
_JSON_ROWS_PER_TURN = 200


@functools.cache
def _sqlite_insert(rows: int) -> str:
    """An INSERT of ``rows`` rows of parameters, ``created_at`` made from epoch seconds in SQL.

    ``created_at`` is the text SQLAlchemy writes (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC), so these rows
    compare and sort with those any other statement writes, rounded to the microsecond as
    ``datetime.fromtimestamp`` rounds: the seconds' fraction times 10^6 (``x``), half to even (SQLite's
    ``round`` takes a tie away from zero, so a tie is settled by hand)."""
    names = ", ".join(_COLUMNS)
    row = f"({', '.join('?' * len(_COLUMNS))})"
    whole = "CAST(x AS INTEGER)"
    micro = f"CASE WHEN x - {whole} = 0.5 THEN {whole} + {whole} % 2 ELSE round(x) END"
    created = "strftime('%Y-%m-%d %H:%M:%S', us / 1000000, 'unixepoch') || printf('.%06d', us % 1000000)"
    return (
        f"WITH given({names}) AS (VALUES {', '.join([row] * rows)}), "
        "split AS (SELECT CAST(created_at AS INTEGER) AS s, "
        "(created_at - CAST(created_at AS INTEGER)) * 1000000.0 AS x, * FROM given), "
        f"micro AS (SELECT CAST(s * 1000000 + {micro} AS INTEGER) AS us, * FROM split) "
        f"INSERT INTO usage ({names}) SELECT {created}, {', '.join(_COLUMNS[1:])} FROM micro"
    )


@functools.cache
def _postgres_insert() -> str:
    """An INSERT of the rows of one JSON parameter (an array of ``_fields`` arrays), taken apart by the
    server; ``created_at`` rounded to the microsecond as ``datetime.fromtimestamp`` rounds (``round`` of a
    double precision takes a tie to the even neighbour, as Python does)."""
    types = {Boolean: "boolean", Integer: "integer", Float: "double precision", String: "text"}
    t = "(row->>0)::double precision"
    us = f"floor({t})::bigint * 1000000 + round(({t} - floor({t})) * 1000000)::bigint"
    values = [f"timestamptz 'epoch' + ({us}) * interval '1 microsecond'"]
    for i, column in enumerate((c for c in usage.columns if c.name not in {"id", "created_at"}), 1):
        values.append(f"(row->>{i})::{next(name for t, name in types.items() if isinstance(column.type, t))}")
    return (
        f"INSERT INTO usage ({', '.join(_COLUMNS)}) SELECT {', '.join(values)} "
        "FROM jsonb_array_elements($1::jsonb) AS row"
    )


async def _json_rows(records: Sequence[RequestRecord]) -> str:
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(records), _JSON_ROWS_PER_TURN):
        if start:
            await asyncio.sleep(0)  # let requests in between
        rows += map(_fields, records[start : start + _JSON_ROWS_PER_TURN])
    return orjson.dumps(rows).decode()


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
        usage_estimated=bool(m["usage_estimated"]),
        search_units=m["search_units"],
        cost=m["cost"],
        error_type=m["error_type"],
    )


class UsageRepository:
    """Append-only ledger rows, read back by time window. Captured content is never stored."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert_many(self, records: Sequence[RequestRecord]) -> int:
        """Write a batch in one transaction; returns how many rows.

        The ledger writes a row per request, so this is the registry's one hot statement, and it runs in
        the serving process: it spends as little CPU as it can, and holds the GIL in short stretches.

        - SQLite: an INSERT of 100 rows' parameters at a time, each row one C call (``attrgetter``); the
          driver's thread binds them in one go and inserts them in one ``sqlite3_step`` (the GIL
          released). ~8 µs a row in all, a third of that on the event loop. Bound row by row
          (``executemany``), the thread took the GIL back for every row: beside a busy event loop each
          take waits out the 5 ms switch interval.
        - Postgres: one JSON parameter (orjson, ~1 µs a row), taken apart by the server."""
        if not records:
            return 0
        if self._db.dialect == "postgresql":
            payload = await _json_rows(records)
            async with self._db.write("recording usage") as conn:
                await conn.exec_driver_sql(_postgres_insert(), (payload,))
            return len(records)
        async with self._db.write("recording usage") as conn:
            for start in range(0, len(records), _SQLITE_ROWS):
                chunk = records[start : start + _SQLITE_ROWS]
                params = tuple(itertools.chain.from_iterable(map(_fields, chunk)))
                await conn.exec_driver_sql(_sqlite_insert(len(chunk)), params)
        return len(records)

    async def query(self, *, since: datetime, until: datetime | None = None) -> list[RequestRecord]:
        """Rows that started in ``[since, until)``, oldest first."""
        stmt = select(usage).where(usage.c.created_at >= since).order_by(usage.c.created_at, usage.c.id)
        if until is not None:
            stmt = stmt.where(usage.c.created_at < until)
        async with self._db.read("reading usage") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]
