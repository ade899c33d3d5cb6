"""The usage ledger's rows: one per finished request, written in batches by ``telemetry.UsageLedger``."""

from __future__ import annotations

import asyncio
import operator
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.engine import Dialect

from superollama.core import RequestRecord
from superollama.core.stamps import UtcStamps
from superollama.registry._base import Database
from superollama.registry.schema import usage

__all__ = ["UsageRepository"]


_COLUMNS = [c.name for c in usage.columns if c.name != "id"]
_ATTRIBUTES = {"created_at": "started_at", "latency": "duration"}  # a column → the record's attribute
# rows built per turn of the event loop (a stall of ~0.2 ms at most)
_ROWS_PER_TURN = 100
# rows SQLite's writer thread inserts before it gives the CPU up (~0.2 ms of work)
_ROWS_PER_YIELD = 32
# rows per INSERT on SQLite: a statement of ten rows takes 22 % fewer instructions a row than ten of one
_ROWS_PER_STATEMENT = 10
_yield_cpu: Callable[[], None] = getattr(os, "sched_yield", lambda: time.sleep(0))
# probes of the fast ``created_at``: the edges of microsecond rounding, a carry into the next second
_PROBES = (1_767_225_599.9999995, 1_767_225_600.0000005, 1_767_225_600.0000015, 1_767_225_600.123456789)


@dataclass(frozen=True, slots=True)
class _CompiledInsert:
    """The ledger's insert for one dialect: its SQL, and how a record becomes its positional parameters
    (the same values ``execute`` would bind)."""

    sql: str
    sql_many: str  # on SQLite, the same with ``_ROWS_PER_STATEMENT`` rows of values
    values: Callable[[RequestRecord], tuple[Any, ...]]  # the record's attributes, in the insert's order
    created: int  # the position of ``created_at`` (a ``time.time()`` float in ``values``)
    created_at: Callable[[float], Any]  # ``started_at`` → the bound ``created_at``
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # the other columns that convert

    def row(self, record: RequestRecord) -> tuple[Any, ...]:
        row = list(self.values(record))
        i = self.created
        row[i] = self.created_at(row[i])
        for i, process in self.processors:
            row[i] = process(row[i])
        return tuple(row)


def _created_at(dialect: Dialect, process: Callable[[Any], Any]) -> Callable[[float], Any]:
    """``started_at`` → what ``process`` (the column's bind processor) makes of it as an aware datetime.

    On SQLite that is text, and the text is made here directly, a second's part once a second (~1 µs a
    row less on the event loop); on Postgres, the datetime. Either is used only if it gives what
    ``process`` gives for the probes, else ``process`` itself."""

    def through_process(t: float) -> Any:
        return process(datetime.fromtimestamp(t, UTC))

    fast: Callable[[float], Any]
    if dialect.name == "sqlite":
        stamps = UtcStamps("%Y-%m-%d %H:%M:%S")

        def fast(t: float) -> Any:
            second, us = stamps(t)
            return f"{second}.{us:06d}"

    else:

        def fast(t: float) -> Any:
            return datetime.fromtimestamp(t, UTC)

    return fast if all(fast(t) == through_process(t) for t in _PROBES) else through_process


class _Paced:
    """The parameters of a batch's statements for SQLite's ``executemany``, built in the driver's thread
    as it asks for them; that thread gives the CPU up every ``_ROWS_PER_YIELD`` rows, counted across the
    batch's statements.

    On a gateway that has one core, the event loop and that thread share it: a 500-row insert ran to its
    end in one of the scheduler's time slices (~3 ms), and the requests that came meanwhile waited all of
    it (most of the c=1 p99). Yielding every few rows lets them in after ~0.2 ms."""

    def __init__(self, row: Callable[[RequestRecord], tuple[Any, ...]]) -> None:
        self._row = row
        self._rows = 0

    def __call__(self, records: Sequence[RequestRecord], per: int = 1) -> Iterator[tuple[Any, ...]]:
        """Each statement's parameters: ``per`` rows' values, one after the other."""
        row = self._row
        for at in range(0, len(records), per):
            if per == 1:
                yield row(records[at])
            else:
                yield tuple(chain.from_iterable(map(row, records[at : at + per])))
            before, self._rows = self._rows, self._rows + per
            if self._rows // _ROWS_PER_YIELD > before // _ROWS_PER_YIELD:
                _yield_cpu()


def _many_rows(sql: str, parameters: int) -> str:
    """A compiled single-row ``INSERT … VALUES (?, …)`` with ``_ROWS_PER_STATEMENT`` rows of placeholders;
    RuntimeError for any other shape."""
    values = "(" + ", ".join(["?"] * parameters) + ")"
    head, sep, tail = sql.rpartition(" VALUES ")
    if not sep or tail != values:
        raise RuntimeError(f"usage insert compiled to an unexpected statement: {sql}")
    return head + sep + ", ".join([values] * _ROWS_PER_STATEMENT)


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
        self._insert: _CompiledInsert | None = None

    async def insert_many(self, records: Sequence[RequestRecord]) -> int:
        """Write a batch in one transaction; returns how many rows.

        The ledger writes a row per request, so this is the registry's one hot statement: it is compiled
        once for the engine's dialect, each row goes through the columns' bind processors (the same
        conversions ``execute`` applies) into a positional tuple, and the batch goes to the driver's
        ``executemany`` as is: a third of the CPU per row of a plain ``execute(insert, dicts)``."""
        if not records:
            return 0
        insert = self._compiled_insert()
        if self._db.dialect == "sqlite":
            many = len(records) - len(records) % _ROWS_PER_STATEMENT
            paced = _Paced(insert.row)
            async with self._db.write("recording usage") as conn:
                driver = await conn.driver_connection()  # aiosqlite's: the rows are built in its thread
                if many:
                    async with driver.executemany(
                        insert.sql_many, paced(records[:many], _ROWS_PER_STATEMENT)
                    ):
                        pass  # the cursor is closed as soon as it is done
                if many < len(records):
                    async with driver.executemany(insert.sql, paced(records[many:])):
                        pass
            return len(records)
        row = insert.row
        rows = []
        for n, record in enumerate(records, 1):
            rows.append(row(record))
            if n % _ROWS_PER_TURN == 0:
                await asyncio.sleep(0)  # let requests in between: 500 rows held the loop for 1 ms
        async with self._db.write("recording usage") as conn:
            await conn.exec_driver_sql(insert.sql, rows)
        return len(records)

    def _compiled_insert(self) -> _CompiledInsert:
        if self._insert is None:
            dialect = self._db.engine.dialect
            compiled = usage.insert().compile(dialect=dialect, column_keys=_COLUMNS)
            order = tuple(compiled.positiontup or ())
            if sorted(order) != sorted(_COLUMNS):  # a dialect with named parameters: not expected here
                raise RuntimeError(f"usage insert compiled to unexpected parameters {order}")
            # one processor a parameter (a sequence of them is for expanding ``IN``, not used here)
            bind: Mapping[str, Callable[[Any], Any]] = compiled._bind_processors  # type: ignore[assignment]
            created = order.index("created_at")
            self._insert = _CompiledInsert(
                sql=compiled.string,
                sql_many=_many_rows(compiled.string, len(order)) if dialect.name == "sqlite" else "",
                values=operator.attrgetter(*(_ATTRIBUTES.get(name, name) for name in order)),
                created=created,
                created_at=_created_at(dialect, bind.get("created_at") or (lambda value: value)),
                processors=tuple(
                    (i, bind[name]) for i, name in enumerate(order) if bind.get(name) and i != created
                ),
            )
        return self._insert

    async def query(self, *, since: datetime, until: datetime | None = None) -> list[RequestRecord]:
        """Rows that started in ``[since, until)``, oldest first."""
        stmt = select(usage).where(usage.c.created_at >= since).order_by(usage.c.created_at, usage.c.id)
        if until is not None:
            stmt = stmt.where(usage.c.created_at < until)
        async with self._db.read("reading usage") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]
