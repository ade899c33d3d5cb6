"""Stored responses of the OpenAI Responses API (``store: true``, the default): what ``GET`` returns and
what ``previous_response_id`` continues from. A stored response belongs to the key that created it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select

from superollama.registry._base import Database, plain
from superollama.registry.schema import stored_responses

__all__ = ["ResponseRepository", "StoredResponse"]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    created_at: datetime
    key_id: str | None
    model: str
    response: dict[str, Any]
    conversation: list[dict[str, Any]]


class ResponseRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        response: Mapping[str, Any],
        conversation: Sequence[Mapping[str, Any]],
        *,
        key_id: str | None,
    ) -> None:
        values = {
            "id": str(response["id"]),
            "created_at": self._db.now(),
            "key_id": key_id,
            "model": str(response.get("model", "")),
            "response": plain(response),
            "conversation": [plain(m) for m in conversation],
        }
        async with self._db.write("storing a response") as conn:
            await conn.execute(stored_responses.insert().values(values))

    async def find(self, response_id: str, *, key_id: str | None) -> StoredResponse | None:
        """The response, if it exists and belongs to ``key_id`` (None: stored without a key)."""
        stmt = select(stored_responses).where(stored_responses.c.id == response_id)
        async with self._db.read("reading a response") as conn:
            row = (await conn.execute(stmt)).first()
        if row is None or row._mapping["key_id"] != key_id:
            return None
        m = row._mapping
        return StoredResponse(
            m["id"], m["created_at"], m["key_id"], m["model"], dict(m["response"]), list(m["conversation"])
        )

    async def delete(self, response_id: str, *, key_id: str | None) -> bool:
        stmt = delete(stored_responses).where(
            stored_responses.c.id == response_id,
            stored_responses.c.key_id.is_(None) if key_id is None else stored_responses.c.key_id == key_id,
        )
        async with self._db.write("deleting a response") as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)
