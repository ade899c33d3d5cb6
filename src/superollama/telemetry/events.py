"""Incidents: lifecycle events as log lines, incidents also to an optional webhook; the rate-limit storm
detector.

``Incidents.notify(event)`` is sync and never blocks: it logs the event (``superollama.events``; WARNING
for an incident) and, for an incident, queues a webhook POST. An incident is an event whose action is one of
``INCIDENT_ACTIONS`` (instance crashed, load failed, connection unhealthy, budget exhausted, rate-limit
storm), or an ``instance.load`` that ``failed``. A background task POSTs each queued event as JSON, with
retries and exponential backoff; the queue is bounded (full: dropped, counted, logged).

The payload carries a ``text`` line too, so a Slack- or Mattermost-style incoming webhook shows it as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from superollama.core import EventRecord

if TYPE_CHECKING:
    import aiohttp

__all__ = ["INCIDENT_ACTIONS", "STORM_ACTION", "Incidents", "is_incident", "webhook_payload"]

log = logging.getLogger("superollama.events")

STORM_ACTION: Final = "ratelimit.storm"
INCIDENT_ACTIONS: frozenset[str] = frozenset(
    {
        "instance.crashed",
        "instance.load_failed",
        "connection.unhealthy",
        "budget.exhausted",
        STORM_ACTION,
        "rollout.step",  # every decision of a canary analysis goes to the webhook too
        "rollout.promote",
        "rollout.rollback",
    }
)
_MAX_KEYS: Final = 10_000  # storm detector: distinct keys tracked before old ones are forgotten


_FAILED_ACTIONS: frozenset[str] = frozenset({"instance.load", "instance.start"})  # incidents when failed


def is_incident(event: EventRecord) -> bool:
    return event.action in INCIDENT_ACTIONS or (event.result == "failed" and event.action in _FAILED_ACTIONS)


def webhook_payload(event: EventRecord, *, node: str | None = None) -> dict[str, Any]:
    created = event.created_at or datetime.now(UTC)
    detail = dict(event.detail)
    error = detail.get("error")
    text = f"superollama: {event.action} {event.target} ({event.result})" + (f": {error}" if error else "")
    return {
        "text": text,
        "action": event.action,
        "target": event.target,
        "result": event.result,
        "actor": event.actor,
        "detail": detail,
        "id": event.id,
        "node": node,
        "created_at": created.isoformat(),
    }


class Incidents:
    """One per app. ``start()`` before events reach the webhook; ``close()`` sends what is queued."""

    def __init__(
        self,
        webhook: str | None = None,
        *,
        node: str | None = None,
        storm_count: int = 100,
        storm_window: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        timeout: float = 10.0,
        max_queue: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        on_drop: Callable[[], None] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._webhook = webhook
        self._node = node
        self._storm_count = max(1, storm_count)
        self._storm_window = storm_window
        self._retries = retries
        self._backoff = backoff
        self._timeout = timeout
        self._clock = clock
        self._on_drop = on_drop
        self._session = session
        self._own_session = session is None
        self._queue: asyncio.Queue[EventRecord] = asyncio.Queue(maxsize=max_queue)
        self._task: asyncio.Task[None] | None = None
        self._hits: dict[str, deque[float]] = {}
        self._storm_until: dict[str, float] = {}
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    # -- events -------------------------------------------------------------------------------------
    def notify(self, event: EventRecord) -> None:
        """Log an event; post an incident to the webhook (queued; sync, never blocks)."""
        incident = is_incident(event)
        level = logging.WARNING if incident else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "%s %s %s by %s %s",
                event.action,
                event.target,
                event.result,
                event.actor,
                orjson.dumps(dict(event.detail), default=str).decode() if event.detail else "",
            )
        if not incident or self._webhook is None:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            log.warning(
                "webhook queue full: %s %s not sent (%d dropped)", event.action, event.target, self.dropped
            )

    def rate_limited(self, key_prefix: str | None, *, model: str | None = None) -> bool:
        """Count one 429 for a key; ``True`` when it starts a storm: ``storm_count`` rejections within
        ``storm_window`` seconds. Then one ``ratelimit.storm`` incident is raised, and no other for that key
        until a window has passed."""
        key = key_prefix or "(no key)"
        now = self._clock()
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= _MAX_KEYS:
                self._forget(now)
            hits = self._hits[key] = deque(maxlen=self._storm_count)
        hits.append(now)
        if len(hits) < self._storm_count or now - hits[0] > self._storm_window:
            return False
        if now < self._storm_until.get(key, 0.0):
            return False
        self._storm_until[key] = now + self._storm_window
        detail: dict[str, Any] = {
            "rejections": len(hits),
            "window_seconds": self._storm_window,
            "within_seconds": round(now - hits[0], 3),
        }
        if model is not None:
            detail["model"] = model
        self.notify(EventRecord(action=STORM_ACTION, target=key, result="failed", detail=detail))
        return True

    def _forget(self, now: float) -> None:
        for key in [k for k, hits in self._hits.items() if not hits or now - hits[-1] > self._storm_window]:
            del self._hits[key]
            self._storm_until.pop(key, None)
        while len(self._hits) >= _MAX_KEYS:  # all busy: forget the oldest half
            for key in list(self._hits)[: _MAX_KEYS // 2]:
                del self._hits[key]
                self._storm_until.pop(key, None)

    # -- the webhook sender -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._webhook is not None and self._task is None:
            if self._session is None:
                import aiohttp

                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
            self._task = asyncio.create_task(self._run(), name="incident webhook")

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._post(event)
            finally:
                self._queue.task_done()

    async def _post(self, event: EventRecord) -> bool:
        assert self._session is not None and self._webhook is not None
        import aiohttp

        body = orjson.dumps(webhook_payload(event, node=self._node), default=str)
        headers: Mapping[str, str] = {"Content-Type": "application/json"}
        delay = self._backoff
        for attempt in range(1, self._retries + 2):
            try:
                async with self._session.post(self._webhook, data=body, headers=headers) as response:
                    if response.status < 300:
                        self.sent += 1
                        return True
                    problem = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        break  # the receiver refuses this payload: retrying will not help
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
            if attempt <= self._retries:
                log.info("webhook attempt %d failed (%s); retrying in %.1f s", attempt, problem, delay)
                await asyncio.sleep(delay)
                delay *= 2
        self.failed += 1
        log.warning("webhook: %s %s not delivered: %s", event.action, event.target, problem)
        return False

    async def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (within ``timeout``), then stop."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
