"""OpenAI files: their bytes in a blob store of their own under the home (``files/blobs/sha256-…``; the
same bytes uploaded twice are stored once), their metadata in the registry. A file belongs to the key that
uploaded it.

Purposes: ``assistants``, ``batch``, ``fine-tune``, ``user_data`` (and ``vision``, ``evals``). A
``fine-tune`` file is checked line by line as chat training JSONL before it is kept; the error names the
line and the problem (what fine-tuning will read, so it fails here rather than hours later). A ``batch``
file is checked the same way as a batch input file (``control.batch_files.check_batch_jsonl``). Files of
purpose ``batch_output`` are written by batches (``save``), never uploaded.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from superollama.control.batch_files import check_batch_jsonl
from superollama.errors import InvalidRequest, NotFound
from superollama.registry._rag import FileRecord, RagRepository
from superollama.store.blobs import BlobStore

__all__ = ["PURPOSES", "FileService", "check_fine_tune_jsonl", "file_json"]

PURPOSES = ("assistants", "batch", "fine-tune", "user_data", "vision", "evals")
_ROLES = ("system", "developer", "user", "assistant", "tool")
_MAX_ERRORS = 5


def file_json(f: FileRecord) -> dict[str, Any]:
    created = int(f.created_at.timestamp()) if f.created_at else 0
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": created,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": f.status,
        "expires_at": int(f.expires_at.timestamp()) if f.expires_at else None,
        "status_details": None,
    }


class FileService:
    def __init__(self, repo: RagRepository, root: Path) -> None:
        self.repo = repo
        self.blobs = BlobStore(root)

    async def upload(
        self,
        data: bytes,
        filename: str,
        purpose: str,
        *,
        key_id: str | None,
        expires_after: Mapping[str, Any] | None = None,
    ) -> FileRecord:
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"purpose must be one of {', '.join(PURPOSES)} (got {purpose!r})", param="purpose"
            )
        if not filename:
            raise InvalidRequest("the file has no name", param="file")
        if purpose == "fine-tune":
            await asyncio.to_thread(check_fine_tune_jsonl, data, filename)
        if purpose == "batch":
            await asyncio.to_thread(check_batch_jsonl, data, filename)
        expires_at = None
        if expires_after:
            seconds = expires_after.get("seconds")
            if expires_after.get("anchor") != "created_at" or not str(seconds or "").isdigit():
                raise InvalidRequest(
                    "expires_after must be {anchor: created_at, seconds: 3600..2592000}",
                    param="expires_after",
                )
            if not 3600 <= int(str(seconds)) <= 2_592_000:
                raise InvalidRequest("expires_after.seconds must be 3600..2592000", param="expires_after")
            expires_at = timedelta(seconds=int(str(seconds)))
        return await self.save(
            data,
            filename,
            purpose,
            key_id=key_id,
            expires_at=None if expires_at is None else datetime.now(UTC) + expires_at,
        )

    async def save(
        self,
        data: bytes,
        filename: str,
        purpose: str,
        *,
        key_id: str | None,
        expires_at: datetime | None = None,
    ) -> FileRecord:
        """Keep ``data`` as a file of ``key_id``, unchecked (what the server writes: batch results)."""
        blob = await self.blobs.ingest([data])
        return await self.repo.add_file(
            FileRecord(
                id=f"file-{uuid.uuid4().hex[:24]}",
                filename=filename,
                purpose=purpose,
                bytes=blob.size,
                digest=blob.digest,
                key_id=key_id,
                expires_at=expires_at,
            )
        )

    async def get(self, file_id: str, *, key_id: str | None) -> FileRecord:
        record = await self.repo.file(file_id, key_id=key_id)
        if record is None:
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return record

    async def content(self, file_id: str, *, key_id: str | None) -> tuple[FileRecord, bytes]:
        record = await self.get(file_id, key_id=key_id)
        return record, await asyncio.to_thread(self.blobs.path(record.digest).read_bytes)

    async def read(self, record: FileRecord) -> bytes:
        return await asyncio.to_thread(self.blobs.path(record.digest).read_bytes)

    async def delete(self, file_id: str, *, key_id: str | None) -> FileRecord:
        record = await self.get(file_id, key_id=key_id)
        await self.repo.delete_file(file_id, key_id=key_id)
        if not await self.repo.digest_used(record.digest):
            await asyncio.to_thread(self.blobs.delete, record.digest)
        return record


def check_fine_tune_jsonl(data: bytes, filename: str = "file") -> int:
    """The number of examples in chat training JSONL; ``InvalidRequest`` naming each bad line (up to 5)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{filename}: not UTF-8 text (byte {exc.start})", param="file") from None
    problems: list[str] = []
    examples = 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        examples += 1
        problem = _example_problem(line)
        if problem is not None:
            problems.append(f"line {number}: {problem}")
            if len(problems) >= _MAX_ERRORS:
                break
    if not problems and examples == 0:
        problems.append("the file has no training examples (one JSON object per line)")
    if problems:
        raise InvalidRequest(
            f"{filename} is not valid fine-tuning JSONL: " + "; ".join(problems), param="file"
        )
    return examples


def _example_problem(line: str) -> str | None:
    try:
        example = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(example, dict):
        return "must be a JSON object"
    if "prompt" in example and "completion" in example and "messages" not in example:
        if not isinstance(example["prompt"], str) or not isinstance(example["completion"], str):
            return "prompt and completion must be strings"
        return None
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return "needs a non-empty 'messages' list"
    assistant = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object"
        role = message.get("role")
        if role not in _ROLES:
            return f"messages[{i}].role must be one of {', '.join(_ROLES)} (got {role!r})"
        content = message.get("content")
        if role == "assistant":
            assistant = True
            if content is None and not message.get("tool_calls"):
                return f"messages[{i}] (assistant) has neither content nor tool_calls"
            if message.get("weight", 1) not in (0, 1):
                return f"messages[{i}].weight must be 0 or 1"
        elif not isinstance(content, str | list):
            return f"messages[{i}].content must be a string or a list of parts"
    if not assistant:
        return "has no assistant message to learn from"
    return None
