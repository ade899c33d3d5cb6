"""This gateway among the others that share the registry: its id, its heartbeat row, and the duties of
the reconciler leader.

Every ``heartbeat`` seconds the gateway writes its row (``registry._cluster``): the generation it has
applied (from the change feed), whether it leads, the backend pid of its leader-lock session (its
liveness). The leader, on election and then on every heartbeat, ends the jobs that dead gateways left
``running`` (failed, saying which gateway stopped: a pull run again resumes from its partial files) and
forgets the rows of gateways gone for a long time. ``status`` is what ``GET /admin/v1/gateways`` and
``superollama status`` show.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from superollama.control.feed import ChangeFeed
from superollama.control.jobs import JobManager
from superollama.control.leader import LeaderLock
from superollama.registry import Registry
from superollama.registry._cluster import GatewayRecord

__all__ = ["GATEWAY_HEADER", "Cluster", "gateway_id"]

GATEWAY_HEADER = "X-Superollama-Gateway"  # on every answer: the id of the gateway (serve) that answered

log = logging.getLogger("superollama.control")

_FORGET_AFTER = 3600.0  # seconds a dead gateway's row stays listed
_FORGET_EVERY = 60.0  # seconds between the heartbeat's forgettings of them


def gateway_id(name: str | None, pid: int | None = None) -> str:
    """This ``serve``'s id: the configured name, else ``host-pid`` (the pid of the whole ``serve``: with
    ``--workers N``, the master's, the same in every worker)."""
    return name or f"{socket.gethostname()}-{pid or os.getpid()}"


class Cluster:
    def __init__(
        self,
        registry: Registry,
        gateway: str,
        feed: ChangeFeed,
        leader: LeaderLock,
        jobs: JobManager,
        *,
        heartbeat: float,
    ) -> None:
        self.gateway = gateway
        self.feed = feed
        self.leader = leader
        self._registry = registry
        self._jobs = jobs
        self._heartbeat = heartbeat
        self.url: str | None = None  # set once the gateway listens
        self._started = datetime.now(UTC)
        self._task: asyncio.Task[None] | None = None
        self._alive: set[str] | None = None  # the gateways alive at the leader's last look
        self._alone = False  # that look found no row but this gateway's (a dead one's row counts)
        self._joined = feed.subscribe("gateways")  # a gateway's row added or removed
        self._forgot = 0.0  # monotonic time of the leader's last forgetting

    @property
    def stale(self) -> float:
        """Seconds without a heartbeat after which a gateway counts as dead."""
        return max(3 * self._heartbeat, 5.0)

    async def start(self) -> None:
        await self.beat()  # listed (and alive) before it takes any request
        self._task = asyncio.create_task(self._run(), name="gateway-heartbeat")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._registry.cluster.remove(self.gateway)

    async def elected(self, leader: bool) -> None:
        """``LeaderLock``'s handler: a new leader ends what dead gateways left running, at once."""
        if leader:
            with contextlib.suppress(Exception):
                await self.beat()
            await self.lead()

    async def beat(self) -> None:
        await self._registry.cluster.heartbeat(
            GatewayRecord(
                id=self.gateway,
                host=socket.gethostname(),
                pid=os.getpid(),
                url=self.url,
                session=self.leader.session_pid,
                generation=self.feed.generation,
                leader=self.leader.is_leader,
                started_at=self._started,
            )
        )

    async def lead(self, *, every: bool = True) -> None:
        """The leader's duties: end the jobs of dead gateways; forget long-dead gateways.

        ``every=False`` (the heartbeat's): the jobs only when the set of live gateways changed since the
        last look (a job is left running only by a gateway that died, and a gateway dies only by leaving
        that set), and the forgetting once every ``_FORGET_EVERY`` seconds. A leader alone on a watched
        (SQLite) registry does not even list the gateways until a row is added or removed: only another
        gateway could die. So an idle ``serve`` writes its heartbeat and reads nothing."""
        if not every and self._alone and self._joined.watched and not self._joined.pending:
            alive = {self.gateway}
        else:
            self._joined.clear()  # before the look: a row added meanwhile sets it again
            gateways = await self._registry.cluster.list(stale=self.stale)
            alive = {g.id for g in gateways if g.alive} | {self.gateway}
            self._alone = all(g.id == self.gateway for g in gateways)
        if every or alive != self._alive:
            ended = await self._jobs.end_orphans(alive, leader=self.gateway)
            for job in ended:
                log.warning(
                    "job %s (%s %s) of a stopped gateway ended as failed", job.id, job.kind, job.target
                )
            self._alive = alive
        if every or time.monotonic() - self._forgot >= _FORGET_EVERY:
            await self._registry.cluster.forget_dead(stale=self.stale, older_than=_FORGET_AFTER)
            self._forgot = time.monotonic()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                await self.beat()
                if self.leader.is_leader:
                    await self.lead(every=False)
            except Exception as exc:
                log.warning("gateway heartbeat: %s", exc)

    async def status(self) -> dict[str, Any]:
        """Every gateway of the registry, the leader, the registry's generation and each one's."""
        gateways = await self._registry.cluster.list(stale=self.stale)
        current = (await self._registry.cluster.generations()).get("all", 0)
        leaders = [g.id for g in gateways if g.alive and g.leader]
        return {
            "gateway": self.gateway,
            "leader": leaders[0] if leaders else None,
            "generation": current,
            "dialect": self._registry.dialect,
            "gateways": [
                {
                    "id": g.id,
                    "host": g.host,
                    "pid": g.pid,
                    "url": g.url,
                    "alive": g.alive,
                    "leader": g.leader and g.alive,
                    "generation": self.feed.generation if g.id == self.gateway else g.generation,
                    "started_at": g.started_at.isoformat() if g.started_at else None,
                    "seen_at": g.seen_at.isoformat() if g.seen_at else None,
                }
                for g in gateways
            ],
        }
