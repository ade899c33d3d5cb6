"""Request accounting across processes: one process counts, the process that owns the instances adds.

The same small protocol on both links of ``serve --workers N`` (a replica → the primary, the primary →
the agent process): the counting side keeps its in-flight counts locally (hot path: a dict update, no
I/O) in an ``ActivityReporter`` and attaches ``take()`` — ``in_flight`` per instance, the instances
``used`` since the last report, ``keep_alive`` changes, and the ``holds`` it now has — to the messages it
sends; a count that leaves or reaches zero wakes ``run``, which sends at most one ``activity`` message per
20 ms, and one per second anyway. The owning side folds each report into its own counts with one
``ActivityLedger`` per peer, and gives everything back when the peer goes away.

A *hold* covers the gap between handing a peer an instance (``ensure``) and that peer's report that it
counts it: ``Holds`` counts one request there until the report names the hold, the peer goes, or a
minute passes (the request was cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp

from superollama.core.waits import wait_set

__all__ = ["ActivityLedger", "ActivityReporter", "Counted", "Holds"]

HOLD_TTL = 60.0
_REPORT_EVERY = 1.0
_REPORT_SPACING = 0.02


class Counted(Protocol):
    """What a report is folded into (an agent, or a ``ControlPlaneClient``)."""

    def acquire(self, instance_id: str) -> None: ...

    def release(self, instance_id: str) -> None: ...

    def set_keep_alive(self, version: str, seconds: float | None) -> None: ...


class ActivityReporter:
    """The counting side: this process's requests in flight per instance."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._used: set[str] = set()
        self._keep: dict[str, float | None] = {}
        self._holds: list[int] = []
        self._urgent = asyncio.Event()

    def in_flight(self, instance_id: str) -> int:
        return self.counts.get(instance_id, 0)

    def acquire(self, instance_id: str) -> None:
        count = self.counts.get(instance_id, 0) + 1
        self.counts[instance_id] = count
        self._used.add(instance_id)
        if count == 1:
            self._urgent.set()

    def release(self, instance_id: str) -> None:
        count = self.counts.get(instance_id, 0) - 1
        if count > 0:
            self.counts[instance_id] = count
        else:
            self.counts.pop(instance_id, None)
            self._urgent.set()

    def set_keep_alive(self, version: str, seconds: float | None) -> None:
        self._keep[version] = seconds
        self._urgent.set()

    def hold(self, hold: int) -> None:
        """The owner counts a target it handed out as in use until a report names ``hold``: the caller
        acquires it right after, before ``run`` can send, so that report carries its count."""
        self._holds.append(hold)

    def take(self) -> dict[str, Any]:
        """The activity to attach to the next message (``used``, keep-alive changes and holds once)."""
        used, self._used = list(self._used), set()
        keep, self._keep = self._keep, {}
        holds, self._holds = self._holds, []
        return {"in_flight": dict(self.counts), "used": used, "keep_alive": keep, "holds": holds}

    def wake(self) -> None:
        self._urgent.set()

    async def run(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Send ``{"op": "activity"}`` (``send`` attaches ``take()``) when woken, at least once a second."""
        while True:
            await wait_set(self._urgent, _REPORT_EVERY)
            self._urgent.clear()
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, OSError, RuntimeError):
                await send({"op": "activity"})
            await asyncio.sleep(_REPORT_SPACING)


class ActivityLedger:
    """The owning side, one per peer: its last report, added to ``target``'s counts."""

    def __init__(self, target: Counted) -> None:
        self._target = target
        self.counts: dict[str, int] = {}

    def fold(self, data: dict[str, Any]) -> None:
        """Acquire every new count (and touch every used instance) first, then release the old ones, so
        no count passes through zero on the way."""
        target = self._target
        for version, seconds in (data.get("keep_alive") or {}).items():
            target.set_keep_alive(str(version), None if seconds is None else float(seconds))
        counts = {str(k): int(v) for k, v in (data.get("in_flight") or {}).items() if int(v) > 0}
        used = {str(i) for i in data.get("used") or ()}
        ids = counts.keys() | self.counts.keys() | used
        for instance in ids:
            for _ in range(counts.get(instance, 0) + (instance in used)):
                target.acquire(instance)
        for instance in ids:
            for _ in range(self.counts.get(instance, 0) + (instance in used)):
                target.release(instance)
        self.counts = counts

    def clear(self) -> None:
        """The peer went away: give back everything it counted."""
        for instance, count in self.counts.items():
            for _ in range(count):
                self._target.release(instance)
        self.counts = {}


class Holds:
    """Targets handed to peers and counted on ``target`` until their report names the hold."""

    def __init__(self, target: Counted) -> None:
        self._target = target
        self._holds: dict[int, tuple[object, str]] = {}  # hold → (owner, instance)
        self._next = 0

    def add(self, owner: object, instance_id: str) -> int:
        self._next += 1
        self._holds[self._next] = (owner, instance_id)
        self._target.acquire(instance_id)
        asyncio.get_running_loop().call_later(HOLD_TTL, self.release, self._next)
        return self._next

    def release(self, hold: int) -> None:
        entry = self._holds.pop(hold, None)
        if entry is not None:
            self._target.release(entry[1])

    def reported(self, data: dict[str, Any]) -> None:
        for hold in data.get("holds") or ():
            self.release(int(hold))

    def drop(self, owner: object) -> None:
        for hold, (held_by, _) in list(self._holds.items()):
            if held_by is owner:
                self.release(hold)
