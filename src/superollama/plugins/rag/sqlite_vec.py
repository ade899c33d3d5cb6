"""``sqlite-vec`` as a ``VectorStore``: one SQLite file, the chunks in a plain table and their vectors in
a ``vec0`` table per dimension, partitioned by collection (a KNN query reads one collection only).

Python's ``sqlite3`` is often built without ``enable_load_extension`` (this machine's is), so the file is
opened with ``apsw``, which loads the extension that the ``sqlite-vec`` wheel ships. One connection,
used under a lock: the service calls in from worker threads.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import apsw
import sqlite_vec

from superollama.errors import InvalidRequest
from superollama.plugins.rag.vectors import Chunk, Hit

__all__ = ["SqliteVecStore"]

_MAX_K = 4096  # sqlite-vec's limit on k in one KNN query

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (name TEXT PRIMARY KEY, dim INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
  id INTEGER PRIMARY KEY,
  collection TEXT NOT NULL,
  file_id TEXT NOT NULL,
  idx INTEGER NOT NULL,
  filename TEXT NOT NULL,
  text TEXT NOT NULL,
  attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_chunks_file ON chunks (collection, file_id);
"""


class SqliteVecStore:
    kind: ClassVar[str] = "sqlite-vec"

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = apsw.Connection(str(path))
        self._db.enable_load_extension(True)
        self._db.load_extension(sqlite_vec.loadable_path())
        self._db.enable_load_extension(False)
        self._db.set_busy_timeout(10_000)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def _dim(self, collection: str) -> int | None:
        row = self._db.execute("SELECT dim FROM collections WHERE name = ?", (collection,)).fetchone()
        return None if row is None else int(row[0])

    def _table(self, dim: int) -> str:
        name = f"vec_{dim}"
        self._db.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {name} USING vec0("
            f"collection TEXT PARTITION KEY, embedding float[{dim}] distance_metric=cosine)"
        )
        return name

    def add(self, collection: str, chunks: Sequence[Chunk]) -> None:
        if not chunks:
            return
        dim = len(chunks[0].vector)
        with self._lock, self._db:
            have = self._dim(collection)
            if have is None:
                self._db.execute("INSERT INTO collections (name, dim) VALUES (?, ?)", (collection, dim))
                have = dim
            table = self._table(have)
            for chunk in chunks:
                if len(chunk.vector) != have:
                    raise InvalidRequest(
                        f"vector store {collection} holds {have}-dimension embeddings; "
                        f"got {len(chunk.vector)}"
                    )
                self._db.execute(
                    "INSERT INTO chunks (collection, file_id, idx, filename, text, attributes) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        collection,
                        chunk.file_id,
                        chunk.index,
                        chunk.filename,
                        chunk.text,
                        json.dumps(dict(chunk.attributes)),
                    ),
                )
                rowid = self._db.last_insert_rowid()
                self._db.execute(
                    f"INSERT INTO {table} (rowid, collection, embedding) VALUES (?, ?, ?)",
                    (rowid, collection, sqlite_vec.serialize_float32(list(chunk.vector))),
                )

    def nearest(self, collection: str, vector: Sequence[float], k: int) -> list[Hit]:
        with self._lock:
            dim = self._dim(collection)
            if dim is None or k <= 0:
                return []
            if len(vector) != dim:
                raise InvalidRequest(
                    f"vector store {collection} holds {dim}-dimension embeddings; the query has {len(vector)}"
                )
            rows = self._db.execute(
                f"SELECT c.file_id, c.idx, c.text, c.filename, c.attributes, v.distance "
                f"FROM (SELECT rowid, distance FROM vec_{dim} WHERE embedding MATCH ? AND k = ? "
                f"AND collection = ?) AS v JOIN chunks AS c ON c.id = v.rowid ORDER BY v.distance",
                (sqlite_vec.serialize_float32(list(vector)), min(k, _MAX_K), collection),
            ).fetchall()
        return [_hit(row) for row in rows]

    def delete_file(self, collection: str, file_id: str) -> int:
        with self._lock, self._db:
            dim = self._dim(collection)
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM chunks WHERE collection = ? AND file_id = ?", (collection, file_id)
                )
            ]
            if dim is not None and ids:
                self._db.executemany(f"DELETE FROM vec_{dim} WHERE rowid = ?", [(i,) for i in ids])
            self._db.execute("DELETE FROM chunks WHERE collection = ? AND file_id = ?", (collection, file_id))
        return len(ids)

    def drop(self, collection: str) -> None:
        with self._lock, self._db:
            dim = self._dim(collection)
            if dim is not None:
                self._db.execute(f"DELETE FROM vec_{dim} WHERE collection = ?", (collection,))
            self._db.execute("DELETE FROM chunks WHERE collection = ?", (collection,))
            self._db.execute("DELETE FROM collections WHERE name = ?", (collection,))

    def count(self, collection: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM chunks WHERE collection = ?", (collection,)
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _hit(row: Any) -> Hit:
    file_id, idx, text, filename, attributes, distance = row
    return Hit(
        file_id=str(file_id),
        index=int(idx),
        text=str(text),
        filename=str(filename),
        attributes=json.loads(attributes),
        score=1.0 - float(distance),
    )
