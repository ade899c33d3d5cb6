"""Join tokens: the secret a machine shows to join the cluster (``agent --join``). Only the token's
SHA-256 and visible prefix are stored; the token itself is shown once, when it is made."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, or_, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from superollama.errors import Conflict, NotFound
from superollama.registry._base import Database
from superollama.registry.schema import join_tokens

__all__ = ["JoinTokenRecord", "JoinTokenRepository"]


@dataclass(frozen=True, slots=True)
class JoinTokenRecord:
    id: str
    name: str
    prefix: str
    hash: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    last_node: str | None = None

    def state(self, now: datetime) -> str:
        """``active``, ``revoked`` or ``expired`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def _record(row: Row[Any]) -> JoinTokenRecord:
    m = row._mapping
    return JoinTokenRecord(
        id=m["id"],
        name=m["name"],
        prefix=m["prefix"],
        hash=m["hash"],
        expires_at=m["expires_at"],
        revoked_at=m["revoked_at"],
        created_at=m["created_at"],
        last_used_at=m["last_used_at"],
        last_node=m["last_node"],
    )


class JoinTokenRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: JoinTokenRecord) -> JoinTokenRecord:
        """Store a new token; ``Conflict`` if its id, name or hash is taken."""
        values = {
            "id": record.id,
            "name": record.name,
            "prefix": record.prefix,
            "hash": record.hash,
            "expires_at": record.expires_at,
            "revoked_at": record.revoked_at,
            "created_at": record.created_at or self._db.now(),
            "last_used_at": None,
            "last_node": None,
        }
        async with self._db.write("adding a join token") as conn:
            try:
                row = (
                    await conn.execute(join_tokens.insert().values(values).returning(*join_tokens.c))
                ).one()
            except SAIntegrityError as exc:
                raise Conflict(f"a join token named {record.name!r} already exists", param="name") from exc
        return _record(row)

    async def list(self) -> list[JoinTokenRecord]:
        stmt = select(join_tokens).order_by(join_tokens.c.created_at, join_tokens.c.id)
        async with self._db.read("listing join tokens") as conn:
            return [_record(r) for r in (await conn.execute(stmt)).all()]

    async def get(self, ident: str) -> JoinTokenRecord:
        """The token whose id or name is ``ident``; ``NotFound`` if there is none."""
        stmt = select(join_tokens).where(or_(join_tokens.c.id == ident, join_tokens.c.name == ident))
        async with self._db.read("reading a join token") as conn:
            row = (await conn.execute(stmt.limit(1))).first()
        if row is None:
            raise NotFound(f"join token {ident!r} not found", param="id")
        return _record(row)

    async def by_hash(self, digest: str) -> JoinTokenRecord | None:
        async with self._db.read("checking a join token") as conn:
            row = (await conn.execute(select(join_tokens).where(join_tokens.c.hash == digest))).first()
        return None if row is None else _record(row)

    async def revoke(self, ident: str) -> JoinTokenRecord:
        """Revoke the token (id or name); revoking it again keeps the first time."""
        record = await self.get(ident)
        if record.revoked_at is not None:
            return record
        stmt = (
            update(join_tokens)
            .where(join_tokens.c.id == record.id, join_tokens.c.revoked_at.is_(None))
            .values(revoked_at=self._db.now())
            .returning(*join_tokens.c)
        )
        async with self._db.write("revoking a join token") as conn:
            row = (await conn.execute(stmt)).first()
        return _record(row) if row is not None else await self.get(record.id)

    async def used(self, token_id: str, node: str) -> None:
        """Record a join the token let in, and the node it named."""
        stmt = (
            update(join_tokens)
            .where(join_tokens.c.id == token_id)
            .values(last_used_at=self._db.now(), last_node=node)
        )
        async with self._db.write("recording a join") as conn:
            await conn.execute(stmt)
