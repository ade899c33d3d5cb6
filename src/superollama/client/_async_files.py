"""The asynchronous client's resource groups for the ``/v1`` routes the CLI uses: files, vector
stores (OpenAI's shapes) and a streamed chat (``superollama run``). Each method is one route.

Its synchronous twin is generated from this file by ``scripts/unasync.py`` (edit this one, then
run it; a unit test fails when the two differ).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import orjson

from superollama.client._async_transport import AsyncResource
from superollama.client._common import quote_name, route, without_none
from superollama.client.types import (
    FileObject,
    JSONObject,
    Page,
    VectorStore,
    VectorStoreFileBatch,
)

__all__ = [
    "AsyncChat",
    "AsyncFiles",
    "AsyncVectorStores",
]


class AsyncFiles(AsyncResource):
    """Files (OpenAI's ``/v1/files``): documents for vector stores, batch and fine-tuning data."""

    @route("GET", "/v1/files")
    async def list(self, *, purpose: str | None = None) -> list[FileObject]:
        return cast(
            list[FileObject], (await self._t.call("GET", "/v1/files", params={"purpose": purpose}))["data"]
        )

    @route("POST", "/v1/files")
    async def upload(
        self, file: str | Path | bytes, *, purpose: str = "assistants", filename: str | None = None
    ) -> FileObject:
        """Upload a file from its path, or ``bytes`` named ``filename``."""
        if isinstance(file, bytes):
            content, name = file, filename or "file"
        else:
            path = Path(file)
            content, name = path.read_bytes(), filename or path.name  # noqa: ASYNC240 (a document)
        files = {"file": (name, content)}
        answer = await self._t.call("POST", "/v1/files", files=files, data={"purpose": purpose})
        return cast(FileObject, answer)

    @route("GET", "/v1/files/{id}")
    async def get(self, file_id: str) -> FileObject:
        return cast(FileObject, await self._t.call("GET", f"/v1/files/{quote_name(file_id)}"))

    @route("GET", "/v1/files/{id}/content")
    async def content(self, file_id: str) -> bytes:
        return cast(bytes, await self._t.call("GET", f"/v1/files/{quote_name(file_id)}/content", raw=True))

    @route("DELETE", "/v1/files/{id}")
    async def delete(self, file_id: str) -> JSONObject:
        return cast(JSONObject, await self._t.call("DELETE", f"/v1/files/{quote_name(file_id)}"))


V = "/v1/vector_stores"


class AsyncVectorStores(AsyncResource):
    """Vector stores (OpenAI's ``/v1/vector_stores``): indexed files to search and ground chat in."""

    @route("GET", V)
    async def list(self, *, limit: int | None = None) -> list[VectorStore]:
        return cast(list[VectorStore], (await self._t.call("GET", V, params={"limit": limit}))["data"])

    @route("POST", V)
    async def create(self, **fields: Any) -> VectorStore:
        """``fields``: name, embedding_model, engine, file_ids, chunking_strategy, metadata …"""
        return cast(VectorStore, await self._t.call("POST", V, json=without_none(**fields)))

    @route("GET", V + "/{id}")
    async def get(self, store_id: str) -> VectorStore:
        return cast(VectorStore, await self._t.call("GET", f"{V}/{quote_name(store_id)}"))

    @route("POST", V + "/{id}")
    async def update(self, store_id: str, **fields: Any) -> VectorStore:
        return cast(VectorStore, await self._t.call("POST", f"{V}/{quote_name(store_id)}", json=fields))

    @route("DELETE", V + "/{id}")
    async def delete(self, store_id: str) -> JSONObject:
        return cast(JSONObject, await self._t.call("DELETE", f"{V}/{quote_name(store_id)}"))

    @route("POST", V + "/{id}/search")
    async def search(self, store_id: str, query: str, **options: Any) -> Page:
        """``options``: max_num_results, filters, ranking_options."""
        body = {"query": query, **options}
        return cast(Page, await self._t.call("POST", f"{V}/{quote_name(store_id)}/search", json=body))

    @route("POST", V + "/{id}/files")
    async def add_file(self, store_id: str, file_id: str, **fields: Any) -> JSONObject:
        body = {"file_id": file_id, **fields}
        return cast(JSONObject, await self._t.call("POST", f"{V}/{quote_name(store_id)}/files", json=body))

    @route("GET", V + "/{id}/files")
    async def list_files(self, store_id: str, **params: Any) -> Page:
        return cast(Page, await self._t.call("GET", f"{V}/{quote_name(store_id)}/files", params=params))

    @route("GET", V + "/{id}/files/{file_id}")
    async def get_file(self, store_id: str, file_id: str) -> JSONObject:
        return cast(
            JSONObject, await self._t.call("GET", f"{V}/{quote_name(store_id)}/files/{quote_name(file_id)}")
        )

    @route("POST", V + "/{id}/files/{file_id}")
    async def update_file(self, store_id: str, file_id: str, attributes: JSONObject) -> JSONObject:
        path = f"{V}/{quote_name(store_id)}/files/{quote_name(file_id)}"
        return cast(JSONObject, await self._t.call("POST", path, json={"attributes": attributes}))

    @route("DELETE", V + "/{id}/files/{file_id}")
    async def remove_file(self, store_id: str, file_id: str) -> JSONObject:
        return cast(
            JSONObject,
            await self._t.call("DELETE", f"{V}/{quote_name(store_id)}/files/{quote_name(file_id)}"),
        )

    @route("POST", V + "/{id}/file_batches")
    async def create_batch(
        self, store_id: str, file_ids: Sequence[str], **fields: Any
    ) -> VectorStoreFileBatch:
        """Index ``file_ids`` as one batch (``fields``: chunking_strategy, attributes)."""
        body = {"file_ids": list(file_ids), **fields}
        path = f"{V}/{quote_name(store_id)}/file_batches"
        return cast(VectorStoreFileBatch, await self._t.call("POST", path, json=body))

    @route("GET", V + "/{id}/file_batches/{batch_id}")
    async def get_batch(self, store_id: str, batch_id: str) -> VectorStoreFileBatch:
        path = f"{V}/{quote_name(store_id)}/file_batches/{quote_name(batch_id)}"
        return cast(VectorStoreFileBatch, await self._t.call("GET", path))

    @route("POST", V + "/{id}/file_batches/{batch_id}/cancel")
    async def cancel_batch(self, store_id: str, batch_id: str) -> VectorStoreFileBatch:
        path = f"{V}/{quote_name(store_id)}/file_batches/{quote_name(batch_id)}/cancel"
        return cast(VectorStoreFileBatch, await self._t.call("POST", path))

    @route("GET", V + "/{id}/file_batches/{batch_id}/files")
    async def batch_files(self, store_id: str, batch_id: str, *, filter: str | None = None) -> Page:
        path = f"{V}/{quote_name(store_id)}/file_batches/{quote_name(batch_id)}/files"
        return cast(Page, await self._t.call("GET", path, params={"filter": filter}))


class AsyncChat(AsyncResource):
    """The one use of the data plane the CLI makes (``superollama run``): a streamed chat."""

    @route("GET", "/v1/models/{model}")
    async def model(self, name: str) -> JSONObject:
        """A routable model (404 when the name routes nowhere)."""
        return cast(JSONObject, await self._t.call("GET", f"/v1/models/{quote_name(name)}"))

    @route("POST", "/v1/chat/completions")
    async def stream(self, model: str, messages: Sequence[JSONObject], **options: Any) -> AsyncIterator[str]:
        """The content deltas of a streamed chat completion; an error mid-stream raises ``ServerError``."""
        from superollama.client._errors import ServerError

        body = {"model": model, "messages": list(messages), "stream": True, **options}
        async for event, data in self._t.events("POST", "/v1/chat/completions", json=body):
            chunk = orjson.loads(data)
            if event == "error" or "error" in chunk:
                err = chunk.get("error", {})
                message = str(err.get("message", err)) if isinstance(err, dict) else str(err)
                raise ServerError(message, status=503)
            for choice in chunk.get("choices", []):
                content = (choice.get("delta") or {}).get("content")
                if content:
                    yield content
