"""One reconciler leader among the control planes sharing a registry: a Postgres advisory lock.

Every gateway opens one dedicated connection (outside the pool) and tries ``pg_try_advisory_lock`` on it
every ``retry`` seconds; the one that gets it is the leader for as long as that session lives. Postgres
releases a session lock when the session ends, so a leader that dies (kill -9, a crash, a lost machine
once its TCP connection is seen closed) hands over without anyone deciding it: another gateway gets the
lock at its next try, within ``retry`` seconds of the session's end. A leader that loses its own session
(it checks it every ``retry`` seconds) steps down at once and tries again on a new one.

On SQLite there is one control plane per registry file by design: it is always the leader.

The session's backend pid is this gateway's liveness in the registry (``registry._cluster``): while it is
connected, the gateway is alive, so the leader can tell the jobs of a dead gateway from a live one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from superollama.core.waits import wait_set
from superollama.registry import Registry

if TYPE_CHECKING:
    import asyncpg

__all__ = ["LeaderLock"]

log = logging.getLogger("superollama.control")

_LOCK_CLASS: Final = 0x534F4C44  # "SOLD": first key of the lock; the second is a hash of the schema
_TRY_SQL: Final = "SELECT pg_try_advisory_lock($1, hashtext(coalesce(current_schema(), '')))"

OnChange = Callable[[bool], Awaitable[None]]


class LeaderLock:
    def __init__(self, registry: Registry, *, retry: float) -> None:
        self._registry = registry
        self._retry = retry
        self._on_change: list[OnChange] = []
        self.is_leader = False
        self.session_pid: int | None = None  # the backend pid of the session (Postgres)
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()

    def on_change(self, handler: OnChange) -> None:
        """Await ``handler(True)`` when this gateway becomes the leader, ``handler(False)`` when it stops
        (every handler added, in the order they were)."""
        self._on_change.append(handler)

    async def start(self) -> None:
        """Start trying; returns once the first try is done (leader or not, or no database)."""
        self._task = asyncio.create_task(self._run(), name="leader-lock")
        await wait_set(self._first, 15)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _set(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        log.info("this gateway %s the reconciler leader", "is now" if leader else "is no longer")
        for handler in self._on_change:
            try:
                await handler(leader)
            except Exception:
                log.exception("the leader change handler failed")

    async def _run(self) -> None:
        delay = self._retry
        while True:
            conn: asyncpg.Connection | None = None
            try:
                opened = await self._registry.session()
                if opened is None:  # SQLite: one control plane per file
                    await self._set(True)
                    self._first.set()
                    await asyncio.Event().wait()
                    return
                conn = opened[0]
                self.session_pid = conn.get_server_pid()
                while True:
                    if not self.is_leader:
                        if await conn.fetchval(_TRY_SQL, _LOCK_CLASS, timeout=self._retry * 5):
                            await self._set(True)
                    else:
                        await conn.fetchval("SELECT 1", timeout=self._retry * 5)
                    self._first.set()
                    await asyncio.sleep(self._retry)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("leader lock: %s; stepping down and reconnecting", exc)
            finally:
                self._first.set()
                if conn is not None:
                    conn.terminate()  # ends the session: the lock goes with it
                    self.session_pid = None
            await self._set(False)
            await asyncio.sleep(delay)
