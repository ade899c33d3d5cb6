"""The change feed between gateways that share one registry: every change reaches every gateway.

Each change to what gateways hold in memory (versions, connections, API keys) bumps a generation in the
registry *in the transaction that makes it* (``registry._base.Database.write``): ``all`` and the kind's own
(``catalog``, ``connections``, ``deployments``, ``keys``). On Postgres that transaction also sends ``NOTIFY``
on a channel of the schema, which the server delivers to every listener when, and only if, it commits. Each
gateway holds one dedicated connection that ``LISTEN``s; on a ping, on (re)connecting, and on a slow safety
poll it reads the generations (one short query) and reloads each kind whose generation moved past the one it
applied. So a gateway that missed pings (a restart, a network blip, a dropped connection) catches up by
itself, and a ping carries no state that could be lost or reordered: the registry is the truth.

Why Postgres ``LISTEN/NOTIFY`` rather than Redis pub/sub, measured with ``bench/notify_vs_pubsub.py`` on
this 2-core machine: a ping takes 0.13-0.14 ms median with NOTIFY sent by a committing transaction and
0.10-0.14 ms with PUBLISH (p99 0.44 vs 0.23 ms idle; 15 vs 12 ms with the machine loaded), so speed does
not decide: both are far under the second we promise. NOTIFY wins on what it guarantees: it is
transactional (sent at commit, never for a rolled-back change, never before the change is visible to the
reader it wakes), and it needs nothing besides the registry every gateway already has (Redis stays
optional, for rate limits). Either way a subscriber that reconnects re-reads the generations.

On SQLite there is no NOTIFY: the poll (at most every second) is how another process on the same file
(two ``serve`` on one home) sees a change. A single process has nothing to catch up with.

The same tick serves the other pollers of a SQLite registry (webhook deliveries, batches, fine-tuning jobs,
rollouts): each ``subscribe``s to a topic and sleeps on its ``Nudge``. Every second the feed asks the
registry's ``watch`` (``registry/_watch.py``) whether anything committed since (one pragma on the loop's
thread, no query through the engine); only then does it read each topic's probe and wake the pollers
whose topic moved, and catch up only when a generation moved. So an idle server runs no query through the
engine at all, and a change made by this process, another worker or another ``serve`` on the file still
reaches its poller within the second it did before. A watched poller also wakes on its own due time (a
webhook retry) and after ``SAFETY`` seconds whatever happens. Where there is no watch (Postgres, an
in-memory SQLite) a ``Nudge`` sleeps the poller's own interval, as before.

The sleeps here wait on an event with ``core.waits.wait_set``, not ``asyncio.wait_for``, which on Python
3.11 loses a cancellation that comes as the event is set: a poller that missed its cancellation ran on
while its owner waited for it to end (a shutdown hung, 1 in 6 test runs, when a change woke the webhooks
poller as the app closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from superollama.core.waits import wait_set
from superollama.registry import Registry

if TYPE_CHECKING:
    import asyncpg

__all__ = ["SAFETY", "ChangeFeed", "Nudge", "Reloader"]

log = logging.getLogger("superollama.control")

Reloader = Callable[[], Awaitable[object]]

_RECONNECT_FIRST = 0.1
_RECONNECT_MAX = 2.0
_SQLITE_POLL_MAX = 1.0
SAFETY = 60.0  # seconds a watched poller sleeps at most, whatever the watch says


class Nudge:
    """What one poller sleeps on (see the module's docstring): set by the feed when the poller's topic
    moved in the registry, or by the poller's own process when it wrote what the poller should see."""

    def __init__(self, *, watched: bool) -> None:
        self.watched = watched  # the feed wakes it: the poller may sleep until its own due time
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    @property
    def pending(self) -> bool:
        """Set and not slept on since (for a poller on its own timer: is there anything to look at?)."""
        return self._event.is_set()

    def clear(self) -> None:
        self._event.clear()

    async def sleep(self, poll: float, *, due: float | None = None) -> None:
        """Until set; at most ``poll`` seconds when unwatched, else ``due`` seconds (the poller's next
        own deadline, None: none) or ``SAFETY``, whichever comes first."""
        timeout = poll if not self.watched else min(SAFETY, SAFETY if due is None else max(0.0, due))
        await wait_set(self._event, timeout)
        self._event.clear()


class ChangeFeed:
    """Keeps this gateway's in-memory state at the registry's generations (see the module's docstring).

    ``watch(kind, reloader)``: what to run when a kind's generation moved (``catalog`` → controller refresh
    and a new routing snapshot, ``connections`` → connections and credentials, ``keys`` → key caches).
    """

    def __init__(self, registry: Registry, *, poll: float) -> None:
        self._registry = registry
        self._reloaders: dict[str, Reloader] = {}
        self._poll = poll
        self._seen: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._nudges: dict[str, list[Nudge]] = {}
        self.connected = False  # the LISTEN session is up (always False on SQLite)
        self.reloads = 0  # how many kinds were reloaded (observability)

    def watch(self, kind: str, reloader: Reloader) -> None:
        self._reloaders[kind] = reloader

    def subscribe(self, topic: str) -> Nudge:
        """A ``Nudge`` the feed sets when ``topic`` (one of ``registry._watch.PROBES``) moved."""
        nudge = Nudge(watched=self._registry.watch is not None)
        self._nudges.setdefault(topic, []).append(nudge)
        return nudge

    @property
    def generation(self) -> int:
        """The ``all`` generation whose changes this gateway has applied."""
        return self._seen.get("all", 0)

    async def baseline(self) -> None:
        """Read the generations *before* loading the state they describe, so a change made while loading
        is seen as newer and reloaded, never missed."""
        self._seen = await self._registry.cluster.generations()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="change-feed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def ping(self) -> None:
        """Check the generations now (a NOTIFY arrived, or a test asks)."""
        self._wake.set()

    async def catch_up(self) -> list[str]:
        """Reload every kind whose generation moved; returns those kinds. A reloader that fails leaves its
        kind behind, so the next ping or poll tries again."""
        current = await self._registry.cluster.generations()
        done: list[str] = []
        for kind, reload in self._reloaders.items():
            value = current.get(kind, 0)
            if value == self._seen.get(kind):
                continue
            try:
                await reload()
            except Exception:
                log.exception("change feed: reloading %s failed; trying again on the next check", kind)
                continue
            self._seen[kind] = value
            done.append(kind)
        if all(current.get(k, 0) == self._seen.get(k) for k in self._reloaders):
            self._seen["all"] = current.get("all", 0)
        self.reloads += len(done)
        if done:
            log.debug("change feed: reloaded %s (generation %d)", ", ".join(done), self.generation)
        return done

    # -- the session -------------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = _RECONNECT_FIRST
        while True:
            conn: asyncpg.Connection | None = None
            try:
                opened = await self._registry.session()
                poll = self._poll
                if opened is not None:
                    conn, channel = opened
                    await conn.add_listener(channel, self._notified)
                    conn.add_termination_listener(self._terminated)
                    self.connected = True
                else:
                    poll = min(poll, _SQLITE_POLL_MAX)
                    if self._registry.watch is not None:
                        await self._watched(poll)
                await self.catch_up()  # what happened while we were not listening
                delay = _RECONNECT_FIRST
                while True:
                    await wait_set(self._wake, poll)
                    self._wake.clear()
                    if conn is not None and conn.is_closed():
                        raise ConnectionError("the change feed's connection closed")
                    await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change feed: %s; reconnecting (the slow poll resumes once connected)", exc)
            finally:
                self.connected = False
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(_RECONNECT_MAX, delay * 2)

    async def _watched(self, poll: float) -> None:
        """The SQLite tick with a watch (the module's docstring); returns only by an exception."""
        watch = self._registry.watch
        assert watch is not None
        version = watch.version()  # before the first look: a commit meanwhile moves it
        seen = watch.probe(["generations", *self._nudges])
        for nudges in self._nudges.values():  # what moved before this baseline: everyone looks once
            for nudge in nudges:
                nudge.set()
        await self.catch_up()
        safety = time.monotonic() + SAFETY
        while True:
            await wait_set(self._wake, poll)
            pinged = self._wake.is_set()
            self._wake.clear()
            try:
                now = watch.version()
                if now == version and not pinged and time.monotonic() < safety:
                    continue
                version = now
                current = watch.probe(["generations", *self._nudges])
            except sqlite3.Error as exc:  # the file away for a moment: everyone looks for themselves
                log.warning("change feed: the registry's watch failed (%s); waking every poller", exc)
                current = {}
            for topic, nudges in self._nudges.items():
                if current.get(topic) != seen.get(topic) or topic not in current:
                    for nudge in nudges:
                        nudge.set()
            seen, moved = current, current.get("generations") != seen.get("generations")
            if pinged or moved or not current or time.monotonic() >= safety:
                safety = time.monotonic() + SAFETY
                await self.catch_up()

    def _notified(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self._wake.set()

    def _terminated(self, _conn: Any) -> None:
        self._wake.set()  # the loop sees the closed connection and reconnects
