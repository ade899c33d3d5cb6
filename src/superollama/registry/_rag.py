"""Files, vector stores, their files and file batches, and chat grounding (migration 13).

A file and a vector store belong to the key that created it (``key_id``; None: made without a key): to
another key it does not exist, like a stored response. The bytes of a file are not here (the home's
``files/`` blob store); the chunks of a vector store are in its engine (``plugins/rag``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.sql.elements import ColumnElement

from superollama.registry._base import Database
from superollama.registry.schema import (
    files,
    groundings,
    vector_store_file_batches,
    vector_store_files,
    vector_stores,
)

__all__ = [
    "FileBatchRecord",
    "FileRecord",
    "GroundingRecord",
    "RagRepository",
    "StoreFileRecord",
    "VectorStoreRecord",
]


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    filename: str
    purpose: str
    bytes: int
    digest: str
    key_id: str | None = None
    status: str = "processed"
    created_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class VectorStoreRecord:
    id: str
    embedding_model: str
    engine: str
    name: str | None = None
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    key_id: str | None = None
    expires_after: Mapping[str, Any] | None = None
    created_at: datetime | None = None
    last_active_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoreFileRecord:
    vector_store_id: str
    file_id: str
    status: str
    chunking: Mapping[str, Any]
    attributes: Mapping[str, Any] = field(default_factory=dict)
    batch_id: str | None = None
    last_error: Mapping[str, str] | None = None
    usage_bytes: int = 0
    chunks: int = 0
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FileBatchRecord:
    id: str
    vector_store_id: str
    cancelled: bool = False
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class GroundingRecord:
    name: str
    vector_store_ids: Sequence[str]
    top_k: int = 4
    score_threshold: float | None = None
    template: str | None = None
    updated_at: datetime | None = None


def _owned(table: Table, key_id: str | None) -> ColumnElement[bool]:
    col = table.c.key_id
    return col.is_(None) if key_id is None else col == key_id


def _page(table: Table, key: str, after: str | None, order: str) -> list[ColumnElement[bool]]:
    """``after`` as a cursor on (created_at, id) in ``order``."""
    if after is None:
        return []
    sub = select(table.c.created_at).where(table.c[key] == after).scalar_subquery()
    newer = order == "asc"
    created, ident = table.c.created_at, table.c[key]
    if newer:
        return [(created > sub) | ((created == sub) & (ident > after))]
    return [(created < sub) | ((created == sub) & (ident < after))]


class RagRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- files --------------------------------------------------------------------------------------
    async def add_file(self, record: FileRecord) -> FileRecord:
        values: dict[str, Any] = {
            "id": record.id,
            "key_id": record.key_id,
            "filename": record.filename,
            "purpose": record.purpose,
            "bytes": record.bytes,
            "digest": record.digest,
            "status": record.status,
            "created_at": self._db.now(),
            "expires_at": record.expires_at,
        }
        async with self._db.write("adding a file") as conn:
            await conn.execute(files.insert().values(values))
        return FileRecord(**values)

    async def file(self, file_id: str, *, key_id: str | None) -> FileRecord | None:
        stmt = select(files).where(files.c.id == file_id, _owned(files, key_id))
        async with self._db.read("reading a file") as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else FileRecord(**row._mapping)

    async def files(
        self,
        *,
        key_id: str | None,
        purpose: str | None = None,
        limit: int = 10_000,
        after: str | None = None,
        order: str = "desc",
    ) -> list[FileRecord]:
        stmt = select(files).where(_owned(files, key_id), *_page(files, "id", after, order))
        if purpose is not None:
            stmt = stmt.where(files.c.purpose == purpose)
        by = (files.c.created_at, files.c.id)
        stmt = stmt.order_by(*(c.asc() if order == "asc" else c.desc() for c in by)).limit(limit)
        async with self._db.read("listing files") as conn:
            rows = (await conn.execute(stmt)).all()
        return [FileRecord(**r._mapping) for r in rows]

    async def delete_file(self, file_id: str, *, key_id: str | None) -> bool:
        stmt = delete(files).where(files.c.id == file_id, _owned(files, key_id))
        async with self._db.write("deleting a file") as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def digest_used(self, digest: str) -> bool:
        async with self._db.read("reading files") as conn:
            n = (await conn.execute(select(func.count()).where(files.c.digest == digest))).scalar()
        return bool(n)

    # -- vector stores ------------------------------------------------------------------------------
    async def add_store(self, record: VectorStoreRecord) -> VectorStoreRecord:
        now = self._db.now()
        values: dict[str, Any] = {
            "id": record.id,
            "key_id": record.key_id,
            "name": record.name,
            "description": record.description,
            "metadata": dict(record.metadata),
            "embedding_model": record.embedding_model,
            "engine": record.engine,
            "expires_after": dict(record.expires_after) if record.expires_after else None,
            "created_at": now,
            "last_active_at": now,
        }
        async with self._db.write("adding a vector store") as conn:
            await conn.execute(vector_stores.insert().values(values))
        return VectorStoreRecord(**values)

    async def store(self, store_id: str, *, key_id: str | None) -> VectorStoreRecord | None:
        stmt = select(vector_stores).where(vector_stores.c.id == store_id, _owned(vector_stores, key_id))
        async with self._db.read("reading a vector store") as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else VectorStoreRecord(**row._mapping)

    async def any_store(self, store_id: str) -> VectorStoreRecord | None:
        """A vector store whoever owns it (grounding, set by an admin, names stores by id)."""
        stmt = select(vector_stores).where(vector_stores.c.id == store_id)
        async with self._db.read("reading a vector store") as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else VectorStoreRecord(**row._mapping)

    async def stores(
        self, *, key_id: str | None, limit: int = 10_000, after: str | None = None, order: str = "desc"
    ) -> list[VectorStoreRecord]:
        stmt = select(vector_stores).where(
            _owned(vector_stores, key_id), *_page(vector_stores, "id", after, order)
        )
        by = (vector_stores.c.created_at, vector_stores.c.id)
        stmt = stmt.order_by(*(c.asc() if order == "asc" else c.desc() for c in by)).limit(limit)
        async with self._db.read("listing vector stores") as conn:
            rows = (await conn.execute(stmt)).all()
        return [VectorStoreRecord(**r._mapping) for r in rows]

    async def update_store(self, store_id: str, **values: Any) -> None:
        values["last_active_at"] = self._db.now()
        async with self._db.write("changing a vector store") as conn:
            await conn.execute(update(vector_stores).where(vector_stores.c.id == store_id).values(values))

    async def delete_store(self, store_id: str) -> None:
        async with self._db.write("deleting a vector store") as conn:
            await conn.execute(
                delete(vector_store_files).where(vector_store_files.c.vector_store_id == store_id)
            )
            await conn.execute(
                delete(vector_store_file_batches).where(
                    vector_store_file_batches.c.vector_store_id == store_id
                )
            )
            await conn.execute(delete(vector_stores).where(vector_stores.c.id == store_id))

    # -- vector store files -------------------------------------------------------------------------
    async def put_store_file(self, record: StoreFileRecord) -> StoreFileRecord:
        """Add a file to a vector store, or start it again (a file added twice is indexed again)."""
        values: dict[str, Any] = {
            "vector_store_id": record.vector_store_id,
            "file_id": record.file_id,
            "batch_id": record.batch_id,
            "status": record.status,
            "last_error": None,
            "attributes": dict(record.attributes),
            "chunking": dict(record.chunking),
            "usage_bytes": 0,
            "chunks": 0,
            "created_at": self._db.now(),
        }
        keys = ["vector_store_id", "file_id"]
        stmt = self._db.upsert(vector_store_files, values, keys, [k for k in values if k not in keys])
        async with self._db.write("adding a file to a vector store") as conn:
            await conn.execute(stmt)
        return StoreFileRecord(**values)

    async def store_file(self, store_id: str, file_id: str) -> StoreFileRecord | None:
        stmt = select(vector_store_files).where(
            vector_store_files.c.vector_store_id == store_id, vector_store_files.c.file_id == file_id
        )
        async with self._db.read("reading a vector store file") as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else StoreFileRecord(**row._mapping)

    async def store_files(
        self,
        store_id: str,
        *,
        batch_id: str | None = None,
        status: str | None = None,
        file_id: str | None = None,
    ) -> list[StoreFileRecord]:
        """Every file of a vector store (or of one batch, or with one status), oldest first."""
        t = vector_store_files
        stmt = select(t).where(t.c.vector_store_id == store_id)
        if batch_id is not None:
            stmt = stmt.where(t.c.batch_id == batch_id)
        if status is not None:
            stmt = stmt.where(t.c.status == status)
        if file_id is not None:
            stmt = stmt.where(t.c.file_id == file_id)
        async with self._db.read("listing vector store files") as conn:
            rows = (await conn.execute(stmt.order_by(t.c.created_at, t.c.file_id))).all()
        return [StoreFileRecord(**r._mapping) for r in rows]

    async def fail_unfinished(self, message: str) -> int:
        """Files left ``in_progress`` by a server that stopped: ``failed`` with ``message`` (their job
        ended with that server)."""
        t = vector_store_files
        stmt = (
            update(t)
            .where(t.c.status == "in_progress")
            .values(status="failed", last_error={"code": "server_error", "message": message})
        )
        async with self._db.write("ending unfinished vector store files") as conn:
            return int((await conn.execute(stmt)).rowcount or 0)

    async def stores_with_file(self, file_id: str) -> list[str]:
        t = vector_store_files
        async with self._db.read("reading vector store files") as conn:
            rows = (await conn.execute(select(t.c.vector_store_id).where(t.c.file_id == file_id))).all()
        return [str(r[0]) for r in rows]

    async def set_store_file(self, store_id: str, file_id: str, **values: Any) -> None:
        t = vector_store_files
        stmt = update(t).where(t.c.vector_store_id == store_id, t.c.file_id == file_id).values(values)
        async with self._db.write("changing a vector store file") as conn:
            await conn.execute(stmt)

    async def delete_store_file(self, store_id: str, file_id: str) -> bool:
        t = vector_store_files
        stmt = delete(t).where(t.c.vector_store_id == store_id, t.c.file_id == file_id)
        async with self._db.write("removing a file from a vector store") as conn:
            return bool((await conn.execute(stmt)).rowcount)

    # -- file batches -------------------------------------------------------------------------------
    async def add_batch(self, batch_id: str, store_id: str) -> FileBatchRecord:
        values: dict[str, Any] = {
            "id": batch_id,
            "vector_store_id": store_id,
            "cancelled": False,
            "created_at": self._db.now(),
        }
        async with self._db.write("adding a file batch") as conn:
            await conn.execute(vector_store_file_batches.insert().values(values))
        return FileBatchRecord(**values)

    async def batch(self, store_id: str, batch_id: str) -> FileBatchRecord | None:
        t = vector_store_file_batches
        stmt = select(t).where(t.c.id == batch_id, t.c.vector_store_id == store_id)
        async with self._db.read("reading a file batch") as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else FileBatchRecord(**row._mapping)

    async def cancel_batch(self, batch_id: str) -> None:
        t = vector_store_file_batches
        async with self._db.write("cancelling a file batch") as conn:
            await conn.execute(update(t).where(t.c.id == batch_id).values(cancelled=True))

    # -- grounding ----------------------------------------------------------------------------------
    async def put_grounding(self, record: GroundingRecord) -> GroundingRecord:
        values: dict[str, Any] = {
            "name": record.name,
            "vector_store_ids": list(record.vector_store_ids),
            "top_k": record.top_k,
            "score_threshold": record.score_threshold,
            "template": record.template,
            "updated_at": self._db.now(),
        }
        stmt = self._db.upsert(groundings, values, ["name"], [k for k in values if k != "name"])
        async with self._db.write("setting a grounding", change="deployments") as conn:
            await conn.execute(stmt)
        return GroundingRecord(**values)

    async def groundings(self) -> list[GroundingRecord]:
        async with self._db.read("listing groundings") as conn:
            rows = (await conn.execute(select(groundings).order_by(groundings.c.name))).all()
        return [GroundingRecord(**r._mapping) for r in rows]

    async def delete_grounding(self, name: str) -> bool:
        async with self._db.write("removing a grounding", change="deployments") as conn:
            return bool((await conn.execute(delete(groundings).where(groundings.c.name == name))).rowcount)
