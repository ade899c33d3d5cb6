"""The catalog of versions (``family:tag``) and the models (families) they belong to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Row, delete, exists, select, update
from sqlalchemy.exc import IntegrityError as SAIntegrityError

from superollama.core import ModelRef, NameError_, VersionRecord
from superollama.errors import InvalidModelName, ModelExists, ModelNotFound
from superollama.registry._base import Database, plain
from superollama.registry.engine import AsyncConnection
from superollama.registry.schema import models, versions

__all__ = ["VersionRepository"]


def _record(row: Row[Any]) -> VersionRecord:
    m = row._mapping
    return VersionRecord(
        name=m["name"],
        model=m["model"],
        tag=m["tag"],
        format=m["format"],
        digest=m["digest"],
        size=int(m["size"]),
        source=m["source"],
        metadata=dict(m["metadata"] or {}),
        enabled=bool(m["enabled"]),
        runtime=m["runtime"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def _missing(name: str) -> ModelNotFound:
    return ModelNotFound(f"model {name!r} not found", param="model")


class VersionRepository:
    """Versions in the registry. A model (family) row exists exactly while it has at least one version.

    Operations on the versions of one model serialise on its ``models`` row (``FOR UPDATE`` on Postgres;
    SQLite write transactions are serial anyway), so adding and deleting the last version never race.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: VersionRecord) -> VersionRecord:
        """Insert a version, and its model row if missing. ``ModelExists`` if the name is taken."""
        now = self._db.now()
        created = record.created_at or now
        values = {
            "name": record.name,
            "model": record.model,
            "tag": record.tag,
            "format": record.format,
            "digest": record.digest,
            "size": record.size,
            "source": record.source,
            "metadata": plain(record.metadata),
            "enabled": record.enabled,
            "runtime": record.runtime,
            "created_at": created,
            "updated_at": record.updated_at or created,
        }
        async with self._db.write("adding a version", change="catalog") as conn:
            await self._lock_model(conn, record.model)
            stmt = self._db.insert_ignore(versions, values, ["name"]).returning(*versions.c)
            row = (await conn.execute(stmt)).first()
            if row is None:
                raise ModelExists(f"model {record.name!r} already exists", param="model")
            return _record(row)

    async def find(self, name: str) -> VersionRecord | None:
        async with self._db.read("reading a version") as conn:
            row = (await conn.execute(select(versions).where(versions.c.name == name))).first()
        return None if row is None else _record(row)

    async def get(self, name: str) -> VersionRecord:
        """The version named ``name``; ``ModelNotFound`` if there is none."""
        record = await self.find(name)
        if record is None:
            raise _missing(name)
        return record

    async def list(
        self, *, enabled: bool | None = None, model: str | None = None, format: str | None = None
    ) -> list[VersionRecord]:
        """Versions ordered by name, filtered by whichever arguments are given."""
        stmt = select(versions).order_by(versions.c.name)
        if enabled is not None:
            stmt = stmt.where(versions.c.enabled == enabled)
        if model is not None:
            stmt = stmt.where(versions.c.model == model)
        if format is not None:
            stmt = stmt.where(versions.c.format == format)
        async with self._db.read("listing versions") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]

    async def set_enabled(self, name: str, enabled: bool) -> VersionRecord:
        return await self._update(name, "enabling a version", enabled=enabled)

    async def update_metadata(self, name: str, changes: Mapping[str, Any]) -> VersionRecord:
        """Merge ``changes`` into the version's metadata (top-level keys replaced, like ``dict.update``)."""
        async with self._db.write("updating version metadata", change="catalog") as conn:
            stmt = select(versions.c["metadata"]).where(versions.c.name == name).with_for_update()
            current = (await conn.execute(stmt)).scalar_one_or_none()
            if current is None:
                raise _missing(name)
            merged = {**dict(current), **plain(changes)}
            return await self._update_in(conn, name, metadata=merged)

    async def rename(self, old: str, new: str) -> VersionRecord:
        """Give version ``old`` the canonical name ``new`` (its model and tag follow from it).

        Raises ``ModelNotFound`` (no ``old``), ``ModelExists`` (``new`` taken) or ``InvalidModelName``
        (``new`` is not a canonical ``family:tag``). The old model row goes with its last version.
        """
        try:
            ref = ModelRef.parse(new)
        except NameError_ as exc:
            raise InvalidModelName(str(exc), param="model") from exc
        if str(ref) != new:
            raise InvalidModelName(f"{new!r} is not canonical: use {str(ref)!r}", param="model")
        async with self._db.write("renaming a version", change="catalog") as conn:
            source = await conn.scalar(select(versions.c.model).where(versions.c.name == old))
            if source is None:
                raise _missing(old)
            if old == new:
                return await self._update_in(conn, old)
            for family in sorted({source, ref.family}):
                await self._lock_model(conn, family)
            taken = await conn.scalar(select(exists().where(versions.c.name == new)))
            if taken:
                raise ModelExists(f"model {new!r} already exists", param="model")
            try:
                record = await self._update_in(conn, old, name=new, model=ref.family, tag=ref.tag)
            except SAIntegrityError as exc:  # taken by a concurrent writer since the check
                raise ModelExists(f"model {new!r} already exists", param="model") from exc
            await self._drop_model_if_empty(conn, source)
            return record

    async def delete(self, name: str) -> None:
        """Delete a version; the model row goes with its last version. ``ModelNotFound`` if missing."""
        async with self._db.write("deleting a version", change="catalog") as conn:
            family = await conn.scalar(select(versions.c.model).where(versions.c.name == name))
            if family is None:
                raise _missing(name)
            await conn.execute(select(models.c.name).where(models.c.name == family).with_for_update())
            result = await conn.execute(delete(versions).where(versions.c.name == name))
            if result.rowcount == 0:
                raise _missing(name)
            await self._drop_model_if_empty(conn, family)

    async def _update(self, key: str, what: str, /, **values: Any) -> VersionRecord:
        async with self._db.write(what, change="catalog") as conn:
            return await self._update_in(conn, key, **values)

    async def _update_in(self, conn: AsyncConnection, key: str, /, **values: Any) -> VersionRecord:
        stmt = (
            update(versions)
            .where(versions.c.name == key)
            .values(updated_at=self._db.now(), **values)
            .returning(*versions.c)
        )
        row = (await conn.execute(stmt)).first()
        if row is None:
            raise _missing(key)
        return _record(row)

    async def _lock_model(self, conn: AsyncConnection, family: str) -> None:
        """Create the model row if missing, and lock it until the end of the transaction."""
        values = {"name": family, "created_at": self._db.now()}
        await conn.execute(self._db.upsert(models, values, ["name"], {"created_at": models.c.created_at}))

    async def _drop_model_if_empty(self, conn: AsyncConnection, family: str) -> None:
        await conn.execute(
            delete(models).where(models.c.name == family, ~exists().where(versions.c.model == models.c.name))
        )
