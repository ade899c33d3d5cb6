"""What every repository shares: short transactions, the clock, dialect-specific upserts, row values."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, text, update
from sqlalchemy.dialects import sqlite

from superollama.registry._errors import mapped
from superollama.registry.engine import AsyncConnection, AsyncEngine
from superollama.registry.schema import generations

__all__ = ["CHANGE_KINDS", "READ_ONLY", "Clock", "Database", "feed_channel_sql", "plain", "utcnow"]

CHANGE_KINDS = ("catalog", "connections", "deployments", "keys")
"""What a gateway reloads when its generation moved: versions (→ routing snapshot), connections (→ routing
snapshot and upstream credentials), API keys (→ the key cache)."""

# The NOTIFY channel of this schema (LISTEN and pg_notify must agree; 44 characters whatever the schema).
_CHANNEL_SQL = "'superollama_' || md5(coalesce(current_schema(), ''))"


def feed_channel_sql() -> str:
    """``SELECT`` this expression on a connection of the registry for the channel to ``LISTEN`` on."""
    return _CHANNEL_SQL


Clock = Callable[[], datetime]

# Execution option read by the SQLite ``begin`` hook (db.py): reads begin DEFERRED, writes IMMEDIATE.
READ_ONLY = "superollama_read_only"


def utcnow() -> datetime:
    return datetime.now(UTC)


def plain(value: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of a mapping (frozen records may hold ``MappingProxyType`` or tuples)."""
    return {str(k): _plain(v) for k, v in value.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return plain(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class Database:
    """The engine plus the few helpers the repositories need. One method call = one short transaction."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utcnow, generations: bool = True) -> None:
        """``generations``: the database has the change feed's table (a test may open a registry migrated
        only part of the way: its changes then bump nothing)."""
        self.engine = engine
        self._generations = generations
        self._reader = engine.execution_options(**{READ_ONLY: True})
        self._clock = clock

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def now(self) -> datetime:
        value = self._clock()
        if value.tzinfo is None:
            raise ValueError("the registry's clock must return aware datetimes")
        return value.astimezone(UTC)

    @asynccontextmanager
    async def write(self, what: str, *, change: str | None = None) -> AsyncIterator[AsyncConnection]:
        """A write transaction; database errors inside become ``RegistryError``.

        ``change`` (one of ``CHANGE_KINDS``): the transaction changes what gateways hold in memory, so it
        bumps that kind's generation and the ``all`` one before it commits and, on Postgres, sends a
        ``NOTIFY`` that the server delivers only if and when it commits (``control/feed.py``)."""
        with mapped(what):
            async with self.engine.begin() as conn:
                yield conn
                if change is not None and self._generations:
                    await self._bump(conn, change)

    async def _bump(self, conn: AsyncConnection, change: str) -> None:
        if change not in CHANGE_KINDS:
            raise ValueError(f"unknown change kind {change!r}")
        stmt = (
            update(generations)
            .where(generations.c.name.in_(("all", change)))
            .values(value=generations.c.value + 1)
            .returning(generations.c.name, generations.c.value)
        )
        values = {str(name): int(value) for name, value in (await conn.execute(stmt)).all()}
        if self.dialect == "postgresql":
            payload = f"{change}:{values.get(change, 0)}:{values.get('all', 0)}"
            await conn.execute(text(f"SELECT pg_notify({_CHANNEL_SQL}, :payload)"), {"payload": payload})

    @asynccontextmanager
    async def read(self, what: str) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (on SQLite it does not take the write lock)."""
        with mapped(what):
            async with self._reader.begin() as conn:
                yield conn

    def insert_ignore(self, table: Table, values: Mapping[str, Any], keys: Sequence[str]) -> Any:
        """``INSERT … ON CONFLICT (keys) DO NOTHING``."""
        return self._insert(table).values(dict(values)).on_conflict_do_nothing(index_elements=list(keys))

    def upsert(
        self,
        table: Table,
        values: Mapping[str, Any],
        keys: Sequence[str],
        update: Sequence[str] | Mapping[str, Any],
    ) -> Any:
        """``INSERT … ON CONFLICT (keys) DO UPDATE``: of the columns named in ``update`` (set to the new
        values), or the ``{column: expression}`` given."""
        stmt = self._insert(table).values(dict(values))
        set_ = dict(update) if isinstance(update, Mapping) else {name: stmt.excluded[name] for name in update}
        return stmt.on_conflict_do_update(index_elements=list(keys), set_=set_)

    def upsert_template(self, table: Table, keys: Sequence[str], update: Sequence[str]) -> Any:
        """``upsert`` without its values, executed with them as parameters: one statement built once and
        compiled once (SQLAlchemy's cache), for a row written over and over (a gateway's heartbeat)."""
        stmt = self._insert(table)
        set_ = {name: stmt.excluded[name] for name in update}
        return stmt.on_conflict_do_update(index_elements=list(keys), set_=set_)

    def _insert(self, table: Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql  # here: a SQLite registry never loads it

            return postgresql.insert(table)
        if self.dialect == "sqlite":
            return sqlite.insert(table)
        raise ValueError(f"unsupported database dialect {self.dialect!r}")
