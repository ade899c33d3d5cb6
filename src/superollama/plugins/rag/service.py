"""Vector stores: create, list, change, delete; files added one by one or in batches, each indexed by a
background job (``control/jobs.py``: read the file, extract its text, chunk it, embed the chunks through a
routable embedding model of ours, store them in the vector store's engine); and search.

A vector store belongs to the key that created it. Its embedding model (a model or deployment name, the
``rag_embedding_model`` setting unless the client names one) and its engine (``sqlite-vec`` or
``lancedb``) are fixed when it is created. Removing a file, or the store, removes its chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from superollama.control import JobManager
from superollama.errors import Conflict, InvalidRequest, NotFound, SuperOllamaError
from superollama.plugins.rag.chunking import ChunkingStrategy, UnsupportedFile, chunk_text, extract_text
from superollama.plugins.rag.files import FileService
from superollama.plugins.rag.vectors import Chunk, Filter, Hit, VectorStore, filtered_search
from superollama.registry._rag import FileBatchRecord, StoreFileRecord, VectorStoreRecord

__all__ = ["ENGINES", "Embed", "VectorStores"]

log = logging.getLogger("superollama.rag")

ENGINES = ("sqlite-vec", "lancedb")
Embed = Callable[[str, Sequence[str]], Awaitable[list[list[float]]]]  # (model, texts) → vectors
_EMBED_BATCH = 32


def open_engine(kind: str, root: Path) -> VectorStore:
    if kind == "sqlite-vec":
        from superollama.plugins.rag.sqlite_vec import SqliteVecStore

        return SqliteVecStore(root / "sqlite-vec.db")
    if kind == "lancedb":
        from superollama.plugins.rag.lance import LanceStore

        return LanceStore(root / "lancedb")
    raise InvalidRequest(f"vector store engine must be one of {', '.join(ENGINES)} (got {kind!r})")


class VectorStores:
    def __init__(
        self,
        files: FileService,
        jobs: JobManager | None,
        embed: Embed,
        root: Path,
        *,
        default_model: str,
        default_engine: str = "sqlite-vec",
        check_model: Callable[[str | None, str], None] | None = None,
    ) -> None:
        """``check_model(key_id, model)``: raises unless the model is routable for that key."""
        self.files = files
        self.repo = files.repo
        self._jobs = jobs
        self._embed = embed
        self._root = root
        self._engines: dict[str, VectorStore] = {}
        self.default_model = default_model
        self.default_engine = default_engine
        self._check_model = check_model
        self._batch_jobs: dict[str, str] = {}  # batch or store-file key → its ingest job

    def engine(self, kind: str) -> VectorStore:
        if kind not in self._engines:
            self._engines[kind] = open_engine(kind, self._root)
        return self._engines[kind]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()

    # -- vector stores ------------------------------------------------------------------------------
    async def create(self, body: Mapping[str, Any], *, key_id: str | None) -> VectorStoreRecord:
        model = body.get("embedding_model") or self.default_model
        engine = body.get("engine") or self.default_engine
        if not isinstance(model, str):
            raise InvalidRequest("embedding_model must be a model name", param="embedding_model")
        if engine not in ENGINES:
            raise InvalidRequest(
                f"engine must be one of {', '.join(ENGINES)} (got {engine!r})", param="engine"
            )
        if self._check_model is not None:
            self._check_model(key_id, model)
        file_ids = _ids(body.get("file_ids"), "file_ids")
        strategy = ChunkingStrategy.parse(body.get("chunking_strategy"))
        for file_id in file_ids:
            await self.files.get(file_id, key_id=key_id)
        record = await self.repo.add_store(
            VectorStoreRecord(
                id=f"vs_{uuid.uuid4().hex[:24]}",
                embedding_model=model,
                engine=str(engine),
                name=_opt_str(body, "name"),
                description=_opt_str(body, "description"),
                metadata=_metadata(body.get("metadata")),
                key_id=key_id,
                expires_after=_expires_after(body.get("expires_after")),
            )
        )
        if file_ids:
            await self._add(record, [(f, {}) for f in file_ids], strategy, batch_id=None)
        return record

    async def get(self, store_id: str, *, key_id: str | None) -> VectorStoreRecord:
        record = await self.repo.store(store_id, key_id=key_id)
        if record is None:
            raise NotFound(f"No vector store found with id '{store_id}'.", param="vector_store_id")
        return record

    async def modify(
        self, store_id: str, body: Mapping[str, Any], *, key_id: str | None
    ) -> VectorStoreRecord:
        await self.get(store_id, key_id=key_id)
        values: dict[str, Any] = {}
        if "name" in body:
            values["name"] = _opt_str(body, "name")
        if "metadata" in body:
            values["metadata"] = _metadata(body.get("metadata"))
        if "expires_after" in body:
            values["expires_after"] = _expires_after(body.get("expires_after"))
        await self.repo.update_store(store_id, **values)
        return await self.get(store_id, key_id=key_id)

    async def delete(self, store_id: str, *, key_id: str | None) -> None:
        record = await self.get(store_id, key_id=key_id)
        for sf in await self.repo.store_files(store_id, status="in_progress"):
            await self._cancel_job(f"{store_id}/{sf.batch_id or sf.file_id}")
        await asyncio.to_thread(self.engine(record.engine).drop, store_id)
        await self.repo.delete_store(store_id)

    async def counts(self, store_id: str, batch_id: str | None = None) -> dict[str, int]:
        counts = dict.fromkeys(("in_progress", "completed", "failed", "cancelled"), 0)
        for sf in await self.repo.store_files(store_id, batch_id=batch_id):
            counts[sf.status] = counts.get(sf.status, 0) + 1
        counts["total"] = sum(counts.values())
        return counts

    async def usage_bytes(self, store_id: str) -> int:
        return sum(sf.usage_bytes for sf in await self.repo.store_files(store_id))

    # -- files of a store ---------------------------------------------------------------------------
    async def add_file(
        self, store_id: str, body: Mapping[str, Any], *, key_id: str | None
    ) -> StoreFileRecord:
        store = await self.get(store_id, key_id=key_id)
        file_id = body.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            raise InvalidRequest("file_id is required", param="file_id")
        await self.files.get(file_id, key_id=key_id)
        attributes = _attributes(body.get("attributes"))
        strategy = ChunkingStrategy.parse(body.get("chunking_strategy"))
        (record,) = await self._add(store, [(file_id, attributes)], strategy, batch_id=None)
        return record

    async def store_file(self, store_id: str, file_id: str, *, key_id: str | None) -> StoreFileRecord:
        await self.get(store_id, key_id=key_id)
        record = await self.repo.store_file(store_id, file_id)
        if record is None:
            raise NotFound(
                f"No file found with id '{file_id}' in vector store '{store_id}'.", param="file_id"
            )
        return record

    async def update_file(
        self, store_id: str, file_id: str, body: Mapping[str, Any], *, key_id: str | None
    ) -> StoreFileRecord:
        """New attributes for a file of the store: its chunks carry them, so it is indexed again with
        them (the same chunking); answers the file ``in_progress``."""
        store = await self.get(store_id, key_id=key_id)
        record = await self.store_file(store_id, file_id, key_id=key_id)
        if "attributes" not in body:
            raise InvalidRequest("attributes is required", param="attributes")
        attributes = _attributes(body.get("attributes"))
        strategy = ChunkingStrategy.parse(record.chunking)
        if record.status == "in_progress" and record.batch_id is None:
            await self._cancel_job(f"{store_id}/{file_id}")
        (updated,) = await self._add(store, [(file_id, attributes)], strategy, batch_id=None)
        return updated

    async def remove_file(self, store_id: str, file_id: str, *, key_id: str | None) -> None:
        store = await self.get(store_id, key_id=key_id)
        record = await self.store_file(store_id, file_id, key_id=key_id)
        if record.status == "in_progress" and record.batch_id is None:
            await self._cancel_job(f"{store_id}/{file_id}")
        await self.repo.delete_store_file(store_id, file_id)
        await asyncio.to_thread(self.engine(store.engine).delete_file, store_id, file_id)

    async def file_removed(self, file_id: str) -> None:
        """A file was deleted: it leaves every vector store it was in, chunks and all."""
        for store_id in await self.repo.stores_with_file(file_id):
            store = await self.repo.any_store(store_id)
            await self.repo.delete_store_file(store_id, file_id)
            if store is not None:
                await asyncio.to_thread(self.engine(store.engine).delete_file, store_id, file_id)

    # -- batches ------------------------------------------------------------------------------------
    async def create_batch(
        self, store_id: str, body: Mapping[str, Any], *, key_id: str | None
    ) -> FileBatchRecord:
        store = await self.get(store_id, key_id=key_id)
        strategy = ChunkingStrategy.parse(body.get("chunking_strategy"))
        shared = _attributes(body.get("attributes"))
        items: list[tuple[str, Mapping[str, Any]]] = [
            (f, shared) for f in _ids(body.get("file_ids"), "file_ids")
        ]
        for i, item in enumerate(body.get("files") or []):
            if not isinstance(item, dict) or not isinstance(item.get("file_id"), str):
                raise InvalidRequest(f"files[{i}] needs a file_id", param="files")
            items.append((item["file_id"], _attributes(item.get("attributes")) or shared))
        if not items:
            raise InvalidRequest("file_ids (or files) must name at least one file", param="file_ids")
        for file_id, _ in items:
            await self.files.get(file_id, key_id=key_id)
        batch = await self.repo.add_batch(f"vsfb_{uuid.uuid4().hex[:24]}", store_id)
        await self._add(store, items, strategy, batch_id=batch.id)
        return batch

    async def batch(self, store_id: str, batch_id: str, *, key_id: str | None) -> FileBatchRecord:
        await self.get(store_id, key_id=key_id)
        batch = await self.repo.batch(store_id, batch_id)
        if batch is None:
            raise NotFound(f"No file batch found with id '{batch_id}'.", param="batch_id")
        return batch

    async def cancel_batch(self, store_id: str, batch_id: str, *, key_id: str | None) -> FileBatchRecord:
        await self.batch(store_id, batch_id, key_id=key_id)
        await self.repo.cancel_batch(batch_id)
        await self._cancel_job(f"{store_id}/{batch_id}")
        for sf in await self.repo.store_files(store_id, batch_id=batch_id, status="in_progress"):
            await self.repo.set_store_file(store_id, sf.file_id, status="cancelled")
        return await self.batch(store_id, batch_id, key_id=key_id)

    # -- search -------------------------------------------------------------------------------------
    async def search(
        self,
        store: VectorStoreRecord,
        queries: Sequence[str],
        k: int,
        where: Filter | None = None,
        threshold: float | None = None,
    ) -> list[Hit]:
        vectors = await self._embed(store.embedding_model, list(queries))
        engine = self.engine(store.engine)
        found: dict[tuple[str, int], Hit] = {}
        for vector in vectors:
            search = partial(filtered_search, engine, store.id, vector, k, where=where, threshold=threshold)
            for hit in await asyncio.to_thread(search):
                key = (hit.file_id, hit.index)
                if key not in found or found[key].score < hit.score:
                    found[key] = hit
        await self.repo.update_store(store.id)  # last_active_at
        return sorted(found.values(), key=lambda h: -h.score)[:k]

    # -- ingest -------------------------------------------------------------------------------------
    async def _add(
        self,
        store: VectorStoreRecord,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        strategy: ChunkingStrategy,
        *,
        batch_id: str | None,
    ) -> list[StoreFileRecord]:
        if self._jobs is None:
            raise Conflict("this gateway process does not index files (the primary worker does)")
        engine = self.engine(store.engine)
        records = []
        for file_id, attributes in items:
            await asyncio.to_thread(engine.delete_file, store.id, file_id)  # added again: indexed again
            records.append(
                await self.repo.put_store_file(
                    StoreFileRecord(
                        vector_store_id=store.id,
                        file_id=file_id,
                        status="in_progress",
                        chunking=strategy.as_json(),
                        attributes=attributes,
                        batch_id=batch_id,
                    )
                )
            )
        jobs = [(batch_id, records)] if batch_id is not None else [(r.file_id, [r]) for r in records]
        for name, todo in jobs:
            key = f"{store.id}/{name}"

            async def work(_emit: Any, todo: list[StoreFileRecord] = todo) -> dict[str, Any]:
                return await self._ingest(store, todo, strategy)

            job = await self._jobs.submit("ingest", key, work, params={"files": [r.file_id for r in todo]})
            self._batch_jobs[key] = job.id
        return records

    async def _cancel_job(self, key: str) -> None:
        job_id = self._batch_jobs.pop(key, None)
        if job_id is not None and self._jobs is not None:
            with contextlib.suppress(SuperOllamaError):
                await self._jobs.cancel(job_id)

    async def _ingest(
        self, store: VectorStoreRecord, todo: Sequence[StoreFileRecord], strategy: ChunkingStrategy
    ) -> dict[str, Any]:
        engine = self.engine(store.engine)
        done = 0
        for sf in todo:
            try:
                chunks = await self._index(store, engine, sf, strategy)
            except asyncio.CancelledError:
                for left in todo:
                    with contextlib.suppress(SuperOllamaError):
                        current = await self.repo.store_file(store.id, left.file_id)
                        if current is not None and current.status == "in_progress":
                            await self.repo.set_store_file(store.id, left.file_id, status="cancelled")
                            await asyncio.to_thread(engine.delete_file, store.id, left.file_id)
                raise
            except UnsupportedFile as exc:
                await self._failed(store, engine, sf, exc.code, exc.message)
            except SuperOllamaError as exc:
                await self._failed(store, engine, sf, "server_error", exc.message)
            else:
                done += chunks
        return {"vector_store_id": store.id, "chunks": done}

    async def _index(
        self, store: VectorStoreRecord, engine: VectorStore, sf: StoreFileRecord, strategy: ChunkingStrategy
    ) -> int:
        file = await self.repo.file(sf.file_id, key_id=store.key_id)
        if file is None:
            raise UnsupportedFile("invalid_file", f"file {sf.file_id} no longer exists")
        data = await self.files.read(file)
        text = await asyncio.to_thread(extract_text, file.filename, data)
        pieces = await asyncio.to_thread(chunk_text, text, strategy)
        if not pieces:
            raise UnsupportedFile("invalid_file", f"{file.filename} has no text to index")
        for start in range(0, len(pieces), _EMBED_BATCH):
            part = pieces[start : start + _EMBED_BATCH]
            vectors = await self._embed(store.embedding_model, part)
            chunks = [
                Chunk(sf.file_id, start + i, text, vector, file.filename, sf.attributes)
                for i, (text, vector) in enumerate(zip(part, vectors, strict=True))
            ]
            await asyncio.to_thread(engine.add, store.id, chunks)
        usage = sum(len(p.encode()) for p in pieces)
        await self.repo.set_store_file(
            store.id, sf.file_id, status="completed", usage_bytes=usage, chunks=len(pieces)
        )
        return len(pieces)

    async def _failed(
        self, store: VectorStoreRecord, engine: VectorStore, sf: StoreFileRecord, code: str, message: str
    ) -> None:
        log.warning("vector store %s: file %s failed: %s", store.id, sf.file_id, message)
        await asyncio.to_thread(engine.delete_file, store.id, sf.file_id)
        await self.repo.set_store_file(
            store.id, sf.file_id, status="failed", last_error={"code": code, "message": message}
        )


def _ids(value: Any, param: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"{param} must be a list of file ids", param=param)
    return list(dict.fromkeys(value))


def _opt_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string", param=key)
    return value


def _expires_after(value: Any) -> dict[str, Any] | None:
    """OpenAI's ``expires_after`` object (kept and shown; stores do not expire here), or null. Anything
    else is a 400: stored as it came, a string made every later answer break its own schema."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("expires_after must be an object: {anchor, days}", param="expires_after")
    return dict(value)


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > 16
        or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in value.items()
        )
    ):
        raise InvalidRequest(
            "metadata: at most 16 string pairs (keys ≤64, values ≤512 chars)", param="metadata"
        )
    return dict(value)


def _attributes(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > 16
        or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str | int | float | bool)
            for k, v in value.items()
        )
    ):
        raise InvalidRequest(
            "attributes: at most 16 pairs, keys ≤64 chars, values strings, numbers or booleans",
            param="attributes",
        )
    return dict(value)
