"""A cheap, synchronous look at whether a SQLite registry changed, for the pollers of an idle server.

Every poller of the control plane (webhook deliveries, batches, fine-tuning jobs, rollouts, the change feed)
used to run its query through the async engine once a second: a few aiosqlite thread round trips each,
30 ms of CPU per second for a server that does nothing. On SQLite they now sleep until this says that
what they look for moved (``control/feed.py`` runs the one shared tick):

- ``PRAGMA data_version`` on a connection of its own, which never writes: it changes when, and only when,
  any other connection (of this process's pool, or of another process on the same file) committed. No
  commit since the last look: nothing to do, at the cost of one pragma (microseconds, no thread).
- Something committed: one ``SELECT`` of a few scalars per topic (``PROBES``), each read from an index or a
  small table, so that a write a poller does not care about (a gateway's heartbeat, the usage ledger)
  wakes nobody.

A read in WAL mode never waits for a writer, so both run on the event loop's thread. Postgres has NOTIFY
and a server to ask: no watch there (``Registry.watch`` is None), the pollers keep their intervals.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Final

from superollama.registry._batches import ACTIVE
from superollama.registry._finetune import FINAL_STATUSES

__all__ = ["PROBES", "SqliteWatch"]


def _among(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


# topic → one SELECT of scalars whose values move when that topic's poller has something to do.
PROBES: Final[Mapping[str, str]] = {
    "generations": "SELECT value FROM generations WHERE name = 'all'",
    "gateways": "SELECT count(*), group_concat(id) FROM gateways",
    "webhooks": "SELECT (SELECT max(id) FROM events), (SELECT max(id) FROM webhook_deliveries)",
    "batches": f"SELECT group_concat(id || ':' || status) FROM batches WHERE status IN ({_among(ACTIVE)})",
    "fine_tuning": "SELECT group_concat(id || ':' || status) FROM fine_tuning_jobs "
    f"WHERE status NOT IN ({_among(FINAL_STATUSES)})",
    "rollouts": "SELECT group_concat(name || ':' || stage || ':' || updated_at) FROM rollouts "
    "WHERE state = 'running'",
}


class SqliteWatch:
    """``version()``: changes when another connection committed; ``probe(topics)``: their values."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # autocommit: each statement reads the latest committed snapshot, then lets it go
            self._conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=1.0
            )
        return self._conn

    def version(self) -> int:
        return int(self._connection().execute("PRAGMA data_version").fetchone()[0])

    def probe(self, topics: list[str]) -> dict[str, object]:
        conn = self._connection()
        return {topic: tuple(conn.execute(PROBES[topic]).fetchone()) for topic in topics}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
