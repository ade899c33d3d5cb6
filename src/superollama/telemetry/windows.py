"""Live per-target stats of deployments on the data plane, and their report to the registry.

Every request a deployment answered is recorded in the window of its (deployment, target) when it ends
(``TargetWindows.record``, called by ``Telemetry.record``): a dict lookup and a ring slot's increments
(``core.canary.TargetWindow``), nothing allocated per request once the target's window exists.

How the leader sees every gateway: each gateway process (a primary, each replica of ``--workers N``,
every gateway on other machines) upserts its windows into the registry's ``target_windows`` every
``rollout_report_interval`` seconds (``WindowReporter``), one row per (process, deployment, target);
the leader sums the fresh rows. Why the registry and not Redis or the primary's socket: it is the one
store every gateway already shares in every mode (SQLite for one machine and its workers, Postgres for
many), it is off the request path (one short transaction per process per interval, whatever the
traffic), and a report is an idempotent overwrite, so a lost one costs nothing but freshness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Protocol

from superollama.core.canary import TargetWindow, WindowStats
from superollama.core.types import RequestRecord

__all__ = ["TargetWindows", "WindowReporter", "reporter_id"]

log = logging.getLogger("superollama.telemetry")


def reporter_id() -> str:
    """This process among every gateway process (a replica shares its primary's gateway id)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class TargetWindows:
    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._by_deployment: dict[str, dict[str, TargetWindow]] = {}
        self._dropped: dict[tuple[str, str], int] = {}  # shadow copies dropped, since start

    def record(self, record: RequestRecord) -> None:
        deployment, target = record.deployment, record.target
        if deployment is None or target is None:
            return
        self.observe(deployment, target, record.duration, record.status >= 500)

    def observe(self, deployment: str, target: str, latency: float, error: bool) -> None:
        targets = self._by_deployment.get(deployment)
        if targets is None:
            targets = self._by_deployment[deployment] = {}
        window = targets.get(target)
        if window is None:
            window = targets[target] = TargetWindow(self._window)
        window.record(self._clock(), latency, error)

    def dropped(self, deployment: str, target: str) -> None:
        """A shadow copy for ``target`` did not fit in the queue."""
        key = (deployment, target)
        self._dropped[key] = self._dropped.get(key, 0) + 1

    def stats(self, deployment: str, target: str) -> WindowStats:
        window = self._by_deployment.get(deployment, {}).get(target)
        return window.stats(self._clock()) if window is not None else WindowStats()

    def snapshot(self) -> list[tuple[str, str, WindowStats, int]]:
        now = self._clock()
        rows = [
            (dep, target, window.stats(now), self._dropped.get((dep, target), 0))
            for dep, targets in self._by_deployment.items()
            for target, window in targets.items()
        ]
        seen = {(r[0], r[1]) for r in rows}
        rows += [(d, t, WindowStats(), n) for (d, t), n in self._dropped.items() if (d, t) not in seen]
        return rows


class Reports(Protocol):
    """Where reports go (``registry.windows``)."""

    async def report(self, reporter: str, rows: list[tuple[str, str, WindowStats, int]]) -> None: ...


class WindowReporter:
    """Upserts this process's windows every ``interval`` seconds (see the module's docstring)."""

    def __init__(self, windows: TargetWindows, store: Reports, *, interval: float) -> None:
        self._windows = windows
        self._store = store
        self._interval = interval
        self._id = reporter_id()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="target-window-reports")

    async def report(self) -> None:
        rows = self._windows.snapshot()
        if rows:
            await self._store.report(self._id, rows)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.report()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.report()
            except Exception as exc:
                log.warning("reporting target windows: %s", exc)
