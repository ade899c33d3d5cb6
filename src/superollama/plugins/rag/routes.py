"""``/v1/files`` and ``/v1/vector_stores`` as the OpenAI SDK calls them (``client.files.*``,
``client.vector_stores.*``, ``.files``, ``.file_batches``, ``.search``). Errors are OpenAI's envelope
(the gateway's error middleware); a resource of another key is a 404, as if it did not exist.

Beyond OpenAI's fields, ``POST /v1/vector_stores`` takes ``embedding_model`` (a routable embedding model
or deployment) and ``engine`` (``sqlite-vec`` | ``lancedb``), through the SDK's ``extra_body``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from superollama.errors import InvalidRequest
from superollama.gateway import read_json
from superollama.gateway.exchange import principal_of
from superollama.gateway.responses import json_response as _json
from superollama.plugins.rag.files import FileService, file_json
from superollama.plugins.rag.service import VectorStores
from superollama.plugins.rag.vectors import compile_filter
from superollama.registry._rag import FileBatchRecord, StoreFileRecord, VectorStoreRecord

__all__ = ["RagRoutes"]

_VS = "/v1/vector_stores"


def _key(request: web.Request) -> str | None:
    principal = principal_of(request)
    return principal.key_id if principal is not None else None


def _ts(value: Any) -> int:
    return int(value.timestamp()) if value is not None else 0


def _page(items: Sequence[dict[str, Any]], request: web.Request, default: int = 20) -> dict[str, Any]:
    """OpenAI's cursor page over ``items`` (already in the asked order): ``after``, ``limit``."""
    limit = _int(request.query.get("limit"), default, "limit", 1, 10_000)
    after = request.query.get("after")
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = list(items[:limit])
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


def _int(value: str | None, default: int, name: str, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", param=name) from None
    if not low <= n <= high:
        raise InvalidRequest(f"{name} must be from {low} to {high}", param=name)
    return n


def _order(request: web.Request) -> str:
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
    return order


class RagRoutes:
    def __init__(self, files: FileService, stores: VectorStores) -> None:
        self._files = files
        self._stores = stores

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/files", self.upload)
        r.add_get("/v1/files", self.list_files)
        r.add_get("/v1/files/{id}", self.get_file)
        r.add_get("/v1/files/{id}/content", self.file_content)
        r.add_delete("/v1/files/{id}", self.delete_file)
        r.add_post(_VS, self.create)
        r.add_get(_VS, self.list)
        r.add_get(f"{_VS}/{{id}}", self.get)
        r.add_post(f"{_VS}/{{id}}", self.modify)
        r.add_delete(f"{_VS}/{{id}}", self.delete)
        r.add_post(f"{_VS}/{{id}}/search", self.search)
        r.add_post(f"{_VS}/{{id}}/files", self.add_file)
        r.add_get(f"{_VS}/{{id}}/files", self.list_store_files)
        r.add_get(f"{_VS}/{{id}}/files/{{file_id}}", self.get_store_file)
        r.add_post(f"{_VS}/{{id}}/files/{{file_id}}", self.update_store_file)
        r.add_delete(f"{_VS}/{{id}}/files/{{file_id}}", self.remove_store_file)
        r.add_post(f"{_VS}/{{id}}/file_batches", self.create_batch)
        r.add_get(f"{_VS}/{{id}}/file_batches/{{batch_id}}", self.get_batch)
        r.add_post(f"{_VS}/{{id}}/file_batches/{{batch_id}}/cancel", self.cancel_batch)
        r.add_get(f"{_VS}/{{id}}/file_batches/{{batch_id}}/files", self.batch_files)

    # -- files --------------------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise InvalidRequest("POST /v1/files takes multipart/form-data (file, purpose)")
        try:
            fields, data, filename = await _form(request)
        except (ValueError, HttpProcessingError) as exc:  # no boundary, a bad part header, not UTF-8 …
            message = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
            raise InvalidRequest(f"the multipart/form-data body could not be read: {message}") from None
        if data is None:
            raise InvalidRequest("the 'file' field is required", param="file")
        if "purpose" not in fields:
            raise InvalidRequest("the 'purpose' field is required", param="purpose")
        expires = {
            k[len("expires_after[") : -1]: v for k, v in fields.items() if k.startswith("expires_after[")
        }
        record = await self._files.upload(
            data, filename, fields["purpose"], key_id=_key(request), expires_after=expires
        )
        return _json(file_json(record))

    async def list_files(self, request: web.Request) -> web.Response:
        limit = _int(request.query.get("limit"), 10_000, "limit", 1, 10_000)
        records = await self._files.repo.files(
            key_id=_key(request),
            purpose=request.query.get("purpose") or None,
            limit=limit + 1,
            after=request.query.get("after") or None,
            order=_order(request),
        )
        data = [file_json(f) for f in records[:limit]]
        return _json(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(records) > limit,
            }
        )

    async def get_file(self, request: web.Request) -> web.Response:
        return _json(file_json(await self._files.get(request.match_info["id"], key_id=_key(request))))

    async def file_content(self, request: web.Request) -> web.Response:
        record, data = await self._files.content(request.match_info["id"], key_id=_key(request))
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{record.filename}"'},
        )

    async def delete_file(self, request: web.Request) -> web.Response:
        record = await self._files.delete(request.match_info["id"], key_id=_key(request))
        await self._stores.file_removed(record.id)
        return _json({"id": record.id, "object": "file", "deleted": True})

    # -- vector stores ------------------------------------------------------------------------------
    async def _store_json(self, store: VectorStoreRecord) -> dict[str, Any]:
        counts = await self._stores.counts(store.id)
        return {
            "id": store.id,
            "object": "vector_store",
            "created_at": _ts(store.created_at),
            "name": store.name,
            "description": store.description,
            "usage_bytes": await self._stores.usage_bytes(store.id),
            "file_counts": counts,
            "status": "in_progress" if counts["in_progress"] else "completed",
            "last_active_at": _ts(store.last_active_at),
            "metadata": dict(store.metadata),
            "expires_after": store.expires_after,
            "expires_at": None,
            "embedding_model": store.embedding_model,
            "engine": store.engine,
        }

    async def create(self, request: web.Request) -> web.Response:
        store = await self._stores.create(await read_json(request), key_id=_key(request))
        return _json(await self._store_json(store))

    async def list(self, request: web.Request) -> web.Response:
        stores = await self._stores.repo.stores(key_id=_key(request), order=_order(request))
        return _json(_page([await self._store_json(s) for s in stores], request))

    async def get(self, request: web.Request) -> web.Response:
        store = await self._stores.get(request.match_info["id"], key_id=_key(request))
        return _json(await self._store_json(store))

    async def modify(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        store = await self._stores.modify(request.match_info["id"], body, key_id=_key(request))
        return _json(await self._store_json(store))

    async def delete(self, request: web.Request) -> web.Response:
        store_id = request.match_info["id"]
        await self._stores.delete(store_id, key_id=_key(request))
        return _json({"id": store_id, "object": "vector_store.deleted", "deleted": True})

    async def search(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        store = await self._stores.get(request.match_info["id"], key_id=_key(request))
        query = body.get("query")
        queries = [query] if isinstance(query, str) else query
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) and q for q in queries):
            raise InvalidRequest("query must be a non-empty string or list of strings", param="query")
        k = body.get("max_num_results", 10)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 50:
            raise InvalidRequest("max_num_results must be an integer from 1 to 50", param="max_num_results")
        where = compile_filter(body["filters"]) if body.get("filters") is not None else None
        threshold = _threshold(body.get("ranking_options"))
        hits = await self._stores.search(store, queries, k, where, threshold)
        return _json(
            {
                "object": "vector_store.search_results.page",
                "search_query": queries,
                "data": [
                    {
                        "file_id": h.file_id,
                        "filename": h.filename,
                        "score": round(h.score, 6),
                        "attributes": dict(h.attributes) or None,
                        "content": [{"type": "text", "text": h.text}],
                    }
                    for h in hits
                ],
                "has_more": False,
                "next_page": None,
            }
        )

    # -- files of a store ---------------------------------------------------------------------------
    async def add_file(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        record = await self._stores.add_file(request.match_info["id"], body, key_id=_key(request))
        return _json(_store_file_json(record))

    async def list_store_files(self, request: web.Request) -> web.Response:
        store_id = request.match_info["id"]
        await self._stores.get(store_id, key_id=_key(request))
        return _json(await self._files_page(request, store_id, None))

    async def _files_page(self, request: web.Request, store_id: str, batch_id: str | None) -> dict[str, Any]:
        status = request.query.get("filter") or None
        if status not in (None, "in_progress", "completed", "failed", "cancelled"):
            raise InvalidRequest("filter must be in_progress, completed, failed or cancelled", param="filter")
        records = await self._stores.repo.store_files(store_id, batch_id=batch_id, status=status)
        items = [_store_file_json(r) for r in records]
        if _order(request) == "desc":
            items.reverse()
        return _page(items, request)

    async def get_store_file(self, request: web.Request) -> web.Response:
        m = request.match_info
        return _json(
            _store_file_json(await self._stores.store_file(m["id"], m["file_id"], key_id=_key(request)))
        )

    async def update_store_file(self, request: web.Request) -> web.Response:
        m = request.match_info
        body = await read_json(request)
        record = await self._stores.update_file(m["id"], m["file_id"], body, key_id=_key(request))
        return _json(_store_file_json(record))

    async def remove_store_file(self, request: web.Request) -> web.Response:
        m = request.match_info
        await self._stores.remove_file(m["id"], m["file_id"], key_id=_key(request))
        return _json({"id": m["file_id"], "object": "vector_store.file.deleted", "deleted": True})

    # -- batches ------------------------------------------------------------------------------------
    async def _batch_json(self, batch: FileBatchRecord) -> dict[str, Any]:
        counts = await self._stores.counts(batch.vector_store_id, batch.id)
        if batch.cancelled:
            status = "cancelled" if not counts["in_progress"] else "cancelling"
        elif counts["in_progress"]:
            status = "in_progress"
        else:
            status = "failed" if counts["failed"] and not counts["completed"] else "completed"
        return {
            "id": batch.id,
            "object": "vector_store.files_batch",
            "created_at": _ts(batch.created_at),
            "vector_store_id": batch.vector_store_id,
            "status": status,
            "file_counts": counts,
        }

    async def create_batch(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        batch = await self._stores.create_batch(request.match_info["id"], body, key_id=_key(request))
        return _json(await self._batch_json(batch))

    async def get_batch(self, request: web.Request) -> web.Response:
        m = request.match_info
        return _json(
            await self._batch_json(await self._stores.batch(m["id"], m["batch_id"], key_id=_key(request)))
        )

    async def cancel_batch(self, request: web.Request) -> web.Response:
        m = request.match_info
        batch = await self._stores.cancel_batch(m["id"], m["batch_id"], key_id=_key(request))
        return _json(await self._batch_json(batch))

    async def batch_files(self, request: web.Request) -> web.Response:
        m = request.match_info
        await self._stores.batch(m["id"], m["batch_id"], key_id=_key(request))
        return _json(await self._files_page(request, m["id"], m["batch_id"]))


async def _form(request: web.Request) -> tuple[dict[str, str], bytes | None, str]:
    """An upload's text fields, the ``file`` part's bytes (None if absent) and its name."""
    fields: dict[str, str] = {}
    data: bytes | None = None
    filename = ""
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "file":
            filename = part.filename or "file"
            data = bytes(await part.read())
        elif part.name:
            fields[part.name] = await part.text()
    return fields, data, filename


def _store_file_json(r: StoreFileRecord) -> dict[str, Any]:
    return {
        "id": r.file_id,
        "object": "vector_store.file",
        "created_at": _ts(r.created_at),
        "vector_store_id": r.vector_store_id,
        "status": r.status,
        "usage_bytes": r.usage_bytes,
        "last_error": dict(r.last_error) if r.last_error else None,
        "attributes": dict(r.attributes),
        "chunking_strategy": dict(r.chunking),
    }


def _threshold(options: Any) -> float | None:
    if options is None:
        return None
    if not isinstance(options, dict):
        raise InvalidRequest("ranking_options must be an object", param="ranking_options")
    value = options.get("score_threshold")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise InvalidRequest("ranking_options.score_threshold must be from 0 to 1", param="ranking_options")
    return float(value)
