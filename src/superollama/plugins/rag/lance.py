"""LanceDB as a ``VectorStore`` (``pip install 'superollama[lancedb]'``): a folder of Lance tables, one per
collection, searched by LanceDB's own vectorised scan (an ANN index can be added on a table once it is
large; ``bench/rag.py`` measures the flat scan at 10k and 100k chunks). Imported only when chosen."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from superollama.errors import InvalidRequest
from superollama.plugins.rag.vectors import Chunk, Hit

__all__ = ["LanceStore"]

_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


class LanceStore:
    kind: ClassVar[str] = "lancedb"

    def __init__(self, path: Path | str) -> None:
        try:
            import lancedb
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise InvalidRequest(
                "the lancedb vector store needs its extra: pip install 'superollama[lancedb]'"
            ) from exc
        Path(path).mkdir(parents=True, exist_ok=True)
        # other processes (the replicas of serve --workers N) write too: every read checks for new versions
        self._db = lancedb.connect(str(path), read_consistency_interval=timedelta(0))
        self._lock = threading.Lock()
        self._tables: dict[str, Any] = {}

    def _open(self, collection: str) -> Any | None:
        if not _SAFE.match(collection):
            raise InvalidRequest(f"invalid collection name {collection!r}")
        table = self._tables.get(collection)
        if table is None:
            try:
                table = self._db.open_table(collection)
            except (FileNotFoundError, ValueError):
                return None
            self._tables[collection] = table
        return table

    def add(self, collection: str, chunks: Sequence[Chunk]) -> None:
        if not chunks:
            return
        import pyarrow as pa

        dim = len(chunks[0].vector)
        rows = []
        for c in chunks:
            if len(c.vector) != dim:
                raise InvalidRequest(f"chunks of {dim} and {len(c.vector)} dimensions in one call")
            rows.append(
                {
                    "file_id": c.file_id,
                    "idx": c.index,
                    "text": c.text,
                    "filename": c.filename,
                    "attributes": json.dumps(dict(c.attributes)),
                    "vector": [float(x) for x in c.vector],
                }
            )
        with self._lock:
            table = self._open(collection)
            if table is None:
                schema = pa.schema(
                    [
                        pa.field("file_id", pa.string()),
                        pa.field("idx", pa.int64()),
                        pa.field("text", pa.string()),
                        pa.field("filename", pa.string()),
                        pa.field("attributes", pa.string()),
                        pa.field("vector", pa.list_(pa.float32(), dim)),
                    ]
                )
                table = self._tables[collection] = self._db.create_table(collection, schema=schema)
            have = table.schema.field("vector").type.list_size
            if have != dim:
                raise InvalidRequest(
                    f"vector store {collection} holds {have}-dimension embeddings; got {dim}"
                )
            table.add(rows)

    def nearest(self, collection: str, vector: Sequence[float], k: int) -> list[Hit]:
        with self._lock:
            table = self._open(collection)
            if table is None or k <= 0:
                return []
            dim = table.schema.field("vector").type.list_size
            if len(vector) != dim:
                raise InvalidRequest(
                    f"vector store {collection} holds {dim}-dimension embeddings; the query has {len(vector)}"
                )
            rows = (
                table.search([float(x) for x in vector])
                .distance_type("cosine")
                .select(["file_id", "idx", "text", "filename", "attributes", "_distance"])
                .limit(k)
                .to_list()
            )
        return [
            Hit(
                file_id=r["file_id"],
                index=int(r["idx"]),
                text=r["text"],
                filename=r["filename"],
                attributes=json.loads(r["attributes"]),
                score=1.0 - float(r["_distance"]),
            )
            for r in rows
        ]

    def delete_file(self, collection: str, file_id: str) -> int:
        if not _SAFE.match(file_id):
            raise InvalidRequest(f"invalid file id {file_id!r}")
        with self._lock:
            table = self._open(collection)
            if table is None:
                return 0
            n = int(table.count_rows(f"file_id = '{file_id}'"))
            if n:
                table.delete(f"file_id = '{file_id}'")
        return n

    def drop(self, collection: str) -> None:
        with self._lock:
            if self._open(collection) is None:
                return
            self._tables.pop(collection, None)
            self._db.drop_table(collection)

    def count(self, collection: str) -> int:
        with self._lock:
            table = self._open(collection)
            return 0 if table is None else int(table.count_rows())

    def close(self) -> None:
        with self._lock:
            self._tables.clear()
