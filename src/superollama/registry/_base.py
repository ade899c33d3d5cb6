"""What every repository shares: short transactions, the clock, dialect-specific upserts, row values."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from superollama.registry._errors import mapped

__all__ = ["READ_ONLY", "Clock", "Database", "plain", "utcnow"]

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

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
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
    async def write(self, what: str) -> AsyncIterator[AsyncConnection]:
        """A write transaction; database errors inside become ``RegistryError``."""
        with mapped(what):
            async with self.engine.begin() as conn:
                yield conn

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

    def _insert(self, table: Table) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        if self.dialect == "sqlite":
            return sqlite.insert(table)
        raise ValueError(f"unsupported database dialect {self.dialect!r}")
