"""External backends (connections): what the operator registered, never their discovered models."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, delete, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from superollama.core import ConnectionRecord
from superollama.errors import Conflict, NotFound
from superollama.registry._base import Database, plain
from superollama.registry.schema import connections

__all__ = ["ConnectionRepository"]


def _record(row: Row[Any]) -> ConnectionRecord:
    m = row._mapping
    return ConnectionRecord(
        name=m["name"],
        kind=m["kind"],
        url=m["url"],
        secret=m["secret"],
        enabled=bool(m["enabled"]),
        options=dict(m["options"] or {}),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        url_secret=m["url_secret"],
    )


def _missing(name: str) -> NotFound:
    return NotFound(f"connection {name!r} not found", param="name")


class ConnectionRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: ConnectionRecord) -> ConnectionRecord:
        """Register a connection; ``Conflict`` if the name is taken."""
        now = self._db.now()
        values = {
            "name": record.name,
            "kind": record.kind,
            "url": record.url,
            "secret": record.secret,
            "url_secret": record.url_secret,
            "enabled": record.enabled,
            "options": plain(record.options),
            "created_at": record.created_at or now,
            "updated_at": now,
        }
        async with self._db.write("adding a connection", change="connections") as conn:
            try:
                row = (
                    await conn.execute(connections.insert().values(values).returning(*connections.c))
                ).one()
            except SAIntegrityError as exc:
                raise Conflict(f"connection {record.name!r} already exists", param="name") from exc
        return _record(row)

    async def find(self, name: str) -> ConnectionRecord | None:
        async with self._db.read("reading a connection") as conn:
            row = (await conn.execute(select(connections).where(connections.c.name == name))).first()
        return _record(row) if row is not None else None

    async def get(self, name: str) -> ConnectionRecord:
        record = await self.find(name)
        if record is None:
            raise _missing(name)
        return record

    async def list(self) -> list[ConnectionRecord]:
        async with self._db.read("listing connections") as conn:
            rows = (await conn.execute(select(connections).order_by(connections.c.name))).all()
        return [_record(row) for row in rows]

    async def set_enabled(self, name: str, enabled: bool) -> ConnectionRecord:
        stmt = (
            update(connections)
            .where(connections.c.name == name)
            .values(enabled=enabled, updated_at=self._db.now())
            .returning(*connections.c)
        )
        async with self._db.write("enabling a connection", change="connections") as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise _missing(name)
        return _record(row)

    async def delete(self, name: str) -> None:
        async with self._db.write("deleting a connection", change="connections") as conn:
            result = await conn.execute(delete(connections).where(connections.c.name == name))
        if result.rowcount == 0:
            raise _missing(name)
