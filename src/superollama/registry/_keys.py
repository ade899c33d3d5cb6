"""API keys: their settings, SHA-256 and visible prefix. The key itself is never stored."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from superollama.core.types import KeyRecord
from superollama.errors import Conflict, NotFound
from superollama.registry._base import Database, plain
from superollama.registry.schema import api_keys

__all__ = ["KeyRepository"]


def _record(row: Row[Any]) -> KeyRecord:
    m = row._mapping
    return KeyRecord(
        id=m["id"],
        name=m["name"],
        prefix=m["prefix"],
        hash=m["hash"],
        role=m["role"],
        models=tuple(m["models"] or ()),
        rpm=m["rpm"],
        tpm=m["tpm"],
        model_limits={str(k): dict(v) for k, v in (m["model_limits"] or {}).items()},
        budget_usd=m["budget_usd"],
        budget_period=m["budget_period"],
        expires_at=m["expires_at"],
        revoked_at=m["revoked_at"],
        created_at=m["created_at"],
        last_used_at=m["last_used_at"],
    )


def _missing(ident: str) -> NotFound:
    return NotFound(f"API key {ident!r} not found", param="id")


class KeyRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: KeyRecord) -> KeyRecord:
        """Store a new key; ``Conflict`` if its id or hash is taken."""
        values = {
            "id": record.id,
            "name": record.name,
            "prefix": record.prefix,
            "hash": record.hash,
            "role": record.role,
            "models": list(record.models),
            "rpm": record.rpm,
            "tpm": record.tpm,
            "model_limits": plain(record.model_limits),
            "budget_usd": record.budget_usd,
            "budget_period": record.budget_period,
            "expires_at": record.expires_at,
            "revoked_at": record.revoked_at,
            "created_at": record.created_at or self._db.now(),
            "last_used_at": record.last_used_at,
        }
        async with self._db.write("adding an API key", change="keys") as conn:
            try:
                row = (await conn.execute(api_keys.insert().values(values).returning(*api_keys.c))).one()
            except SAIntegrityError as exc:
                raise Conflict(f"API key {record.id!r} (or its hash) already exists", param="id") from exc
        return _record(row)

    async def find(self, ident: str) -> KeyRecord | None:
        """The key whose id or visible prefix is ``ident``; ``Conflict`` if a prefix names several."""
        stmt = select(api_keys).where(or_(api_keys.c.id == ident, api_keys.c.prefix == ident)).limit(2)
        async with self._db.read("reading an API key") as conn:
            rows = (await conn.execute(stmt)).all()
        if len(rows) > 1:
            raise Conflict(f"{ident!r} names several API keys: use the id", param="id")
        return _record(rows[0]) if rows else None

    async def get(self, ident: str) -> KeyRecord:
        record = await self.find(ident)
        if record is None:
            raise _missing(ident)
        return record

    async def find_by_hash(self, key_hash: str) -> KeyRecord | None:
        async with self._db.read("reading an API key") as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.hash == key_hash))).first()
        return _record(row) if row is not None else None

    async def list(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        """Every key, oldest first."""
        stmt = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            stmt = stmt.where(api_keys.c.revoked_at.is_(None))
        async with self._db.read("listing API keys") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]

    async def revoke(self, key_id: str, *, at: datetime | None = None) -> KeyRecord:
        """Mark a key revoked (now unless ``at``); revoking it again keeps the first time."""
        when = at or self._db.now()
        stmt = (
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=when)
        )
        async with self._db.write("revoking an API key", change="keys") as conn:
            await conn.execute(stmt)
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None:
            raise _missing(key_id)
        return _record(row)

    async def rotate(self, key_id: str, *, prefix: str, key_hash: str) -> KeyRecord:
        """Give a key a new secret (``prefix`` and ``key_hash``), keeping its id and settings; the old
        secret stops working. ``Conflict`` for a revoked key."""
        stmt = (
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(prefix=prefix, hash=key_hash)
            .returning(*api_keys.c)
        )
        exists = None
        async with self._db.write("rotating an API key", change="keys") as conn:
            try:
                row = (await conn.execute(stmt)).first()
            except SAIntegrityError as exc:
                raise Conflict("the new key's hash already exists", param="id") from exc
            if row is None:
                exists = (await conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id))).first()
        if row is None:
            if exists is None:
                raise _missing(key_id)
            raise Conflict(f"API key {key_id!r} is revoked: create a new one", param="id")
        return _record(row)

    async def touch(self, last_used: Mapping[str, datetime]) -> None:
        """Record when keys were last used: ``{key id: time}``, many at once, in one transaction (the caller
        batches them off the request path). Unknown ids are ignored; a time never moves backwards."""
        if not last_used:
            return
        col = api_keys.c.last_used_at
        stmt = (
            update(api_keys)
            .where(api_keys.c.id == bindparam("key_id"))
            .where(or_(col.is_(None), col < bindparam("used")))
            .values(last_used_at=bindparam("used"))
        )
        params = [{"key_id": k, "used": v} for k, v in sorted(last_used.items())]
        async with self._db.write("recording API key use") as conn:
            await conn.execute(stmt, params)
