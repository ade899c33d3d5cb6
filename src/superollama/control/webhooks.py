"""Webhooks: every event of the event log (lifecycle, keys, connections, deployments, rollouts, jobs),
POSTed to the URLs that asked for it, signed, retried with backoff, with a delivery log.

The event log in the registry is the source: events are written there by every process (gateways, the
CLI's offline commands, agents), so only a reader of the registry sees them all. The **reconciler leader**
(``LeaderLock``; SQLite: the one control plane) turns new events into deliveries (an outbox in the
registry) and sends the ones that are due, so each delivery leaves from one place, and a leader that dies
hands the pending ones to the next with nothing lost and nothing sent twice by two gateways at once. A
delivery is at least once: a leader that dies after a receiver answered but before it wrote that down
sends it again; the ``X-Superollama-Delivery`` header lets a receiver see a repeat.

Body: ``{"id", "type", "created_at", "data": {target, result, actor, detail}}`` — the same for every
attempt. Headers: ``X-Superollama-Event`` (the type), ``X-Superollama-Delivery`` (the delivery id) and
``X-Superollama-Signature`` (``core.signing``: HMAC-SHA256 over timestamp and body). A 2xx answer is
delivered; anything else (or no answer in ``timeout``) is retried after 1, 2, 4, … seconds (at most
``BACKOFF_CAP``, or the receiver's ``Retry-After``), until ``max_attempts``; then the delivery is failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets as _random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from superollama import __version__
from superollama.control.feed import Nudge
from superollama.control.secrets import SecretBox
from superollama.core import EventRecord
from superollama.core.signing import SIGNATURE_HEADER, signature_header
from superollama.errors import InvalidRequest, NotFound
from superollama.registry import Delivery, Registry, WebhookRecord

__all__ = ["WebhookManager", "event_payload"]

log = logging.getLogger("superollama.control.webhooks")

BACKOFF_CAP = 300.0  # seconds between two attempts, at most
WINDOW = 200  # events re-read below the cursor: a lower id may commit after a higher one (Postgres)
_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]-]{1,100}$")


@dataclass(frozen=True)
class Sent:
    state: str
    status_code: int | None
    error: str | None
    duration_ms: float


class WebhookManager:
    """The admin API's use cases, and (on the leader) the delivery loop."""

    def __init__(
        self,
        registry: Registry,
        box: SecretBox,
        *,
        poll: float = 1.0,
        timeout: float = 10.0,
        max_attempts: int = 8,
        concurrency: int = 8,
        nudge: Nudge | None = None,
    ) -> None:
        """``nudge``: the change feed's for the ``webhooks`` topic (new events or deliveries); without one
        the loop looks every ``poll`` seconds."""
        self._registry = registry
        self._nudge = nudge or Nudge(watched=False)
        self._repo = registry.webhooks
        self._box = box
        self._poll = poll
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._slots = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.Task[None] | None = None

    # -- use cases ---------------------------------------------------------------------------------------
    async def add(
        self, url: Any, events: Any = None, *, description: Any = "", secret: str | None = None
    ) -> tuple[WebhookRecord, str]:
        """A new hook and its signing secret (shown once: only its sealed form is stored)."""
        plain = secret or "whsec_" + _random.token_urlsafe(32)
        if len(plain) < 16:
            raise InvalidRequest("a webhook secret needs at least 16 characters", param="secret")
        hook = WebhookRecord(
            id="wh_" + _random.token_hex(8),
            url=_url(url),
            events=_patterns(["*"] if events is None else events),
            secret=self._box.encrypt(plain),
            description=_description(description),
        )
        return await self._repo.add(hook), plain

    async def get(self, hook_id: str) -> WebhookRecord:
        hook = await self._repo.get(hook_id)
        if hook is None:
            raise NotFound(f"webhook {hook_id!r} not found")
        return hook

    async def all(self) -> list[WebhookRecord]:
        return await self._repo.all()

    async def change(self, hook_id: str, changes: dict[str, Any]) -> tuple[WebhookRecord, str | None]:
        """Change ``url``, ``events``, ``description``, ``enabled``; ``rotate_secret``: a new secret
        (returned, shown once)."""
        known = {"url", "events", "description", "enabled", "rotate_secret"}
        if unknown := sorted(set(changes) - known):
            raise InvalidRequest(
                f"unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}", param=unknown[0]
            )
        fields: dict[str, Any] = {}
        if "url" in changes:
            fields["url"] = _url(changes["url"])
        if "events" in changes:
            fields["events"] = _patterns(changes["events"])
        if "description" in changes:
            fields["description"] = _description(changes["description"])
        if "enabled" in changes:
            if not isinstance(changes["enabled"], bool):
                raise InvalidRequest("'enabled' must be true or false", param="enabled")
            fields["enabled"] = changes["enabled"]
        secret = None
        if changes.get("rotate_secret") is True:
            secret = "whsec_" + _random.token_urlsafe(32)
            fields["secret"] = self._box.encrypt(secret)
        hook = await self._repo.update(hook_id, **fields)
        if hook is None:
            raise NotFound(f"webhook {hook_id!r} not found")
        return hook, secret

    async def remove(self, hook_id: str) -> None:
        if not await self._repo.remove(hook_id):
            raise NotFound(f"webhook {hook_id!r} not found")

    async def deliveries(self, hook_id: str, *, limit: int, state: str | None) -> list[Delivery]:
        await self.get(hook_id)
        return await self._repo.deliveries(hook_id, limit=limit, state=state)

    async def ping(self, hook_id: str) -> Delivery:
        """Send a ``webhook.ping`` now, from this gateway; its first attempt's outcome is returned (retries,
        if it failed, are the leader's like any delivery's)."""
        hook = await self.get(hook_id)
        now = self._registry_now()
        payload: dict[str, Any] = {
            "id": "ping_" + _random.token_hex(8),
            "type": "webhook.ping",
            "created_at": now.isoformat(),
            "data": {"webhook_id": hook.id},
        }
        delivery = await self._repo.add_ping(hook.id, payload)
        await self._attempt(hook, delivery)
        self._nudge.set()  # a failed ping is retried by the loop: it learns the retry's time
        return next(d for d in await self._repo.deliveries(hook.id, limit=5) if d.id == delivery.id)

    # -- the leader's loop ----------------------------------------------------------------------------------
    async def elected(self, leader: bool) -> None:
        """``LeaderLock``'s handler: only the leader reads the event log and sends deliveries."""
        if leader and self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="webhooks")
        elif not leader:
            await self._stop()

    async def close(self) -> None:
        await self._stop()
        if self._session is not None:
            await self._session.close()

    async def _stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the registry may be away for a while: the next tick tries again
                log.exception("webhook deliveries: this round failed")
            await self._nudge.sleep(self._poll, due=await self._next_due())

    async def _next_due(self) -> float | None:
        """Seconds until the next pending delivery is due (a retry), when the feed wakes the loop."""
        if not self._nudge.watched:
            return None
        try:
            due = await self._repo.next_due()
        except Exception:  # looked at again after the poll interval
            return self._poll
        return None if due is None else (due - self._registry_now()).total_seconds()

    async def tick(self) -> int:
        """One round: new events into deliveries, then send what is due; returns how many were sent."""
        cursor = await self._repo.cursor()
        if cursor is None:  # first start: hooks get what happens from now on, not the whole history
            cursor = await self._repo.last_event_id()
            await self._repo.enqueue([], [], cursor, [])
        hooks = await self._repo.all()  # once a round: matching new events and sending due ones both use it
        new = await self._repo.events_after(max(0, cursor - WINDOW), limit=WINDOW + 500)
        if new and (top := max(e.id or 0 for e in new)) > 0:
            await self._repo.enqueue(hooks, new, max(cursor, top), [event_payload(e) for e in new])
        due = await self._repo.due(self._registry_now(), limit=100)
        if not due:
            return 0
        hooks_by_id = {h.id: h for h in hooks}
        await asyncio.gather(*(self._attempt(hooks_by_id.get(d.webhook_id), d) for d in due))
        return len(due)

    async def _attempt(self, hook: WebhookRecord | None, delivery: Delivery) -> None:
        attempts = delivery.attempts + 1
        if hook is None or not hook.enabled:
            why = "the webhook was removed" if hook is None else "the webhook is disabled"
            sent = Sent("failed", None, why, 0.0)
        else:
            async with self._slots:
                sent, retry_after = await self._send(hook, delivery)
        now = self._registry_now()
        state, next_at = sent.state, now
        if state != "delivered" and hook is not None and hook.enabled:
            if attempts >= self._max_attempts:
                state = "failed"
            else:
                state = "pending"
                wait = min(BACKOFF_CAP, 2.0 ** (attempts - 1)) * random.uniform(0.8, 1.2)
                next_at = now + timedelta(seconds=max(wait, min(retry_after or 0.0, BACKOFF_CAP)))
        await self._repo.attempted(
            delivery.id,
            state=state,
            attempts=attempts,
            next_at=next_at,
            status_code=sent.status_code,
            error=sent.error,
            duration_ms=sent.duration_ms,
        )

    async def _send(self, hook: WebhookRecord, delivery: Delivery) -> tuple[Sent, float | None]:
        secret = self._box.open(hook.secret) or ""
        body = orjson.dumps(delivery.payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"superollama-webhooks/{__version__}",
            "X-Superollama-Event": delivery.action,
            "X-Superollama-Delivery": str(delivery.id),
            SIGNATURE_HEADER: signature_header(secret, body),
        }
        t0 = time.perf_counter()
        try:
            async with self._client().post(
                hook.url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self._timeout)
            ) as answer:
                await answer.read()
                ms = (time.perf_counter() - t0) * 1000
                if 200 <= answer.status < 300:
                    return Sent("delivered", answer.status, None, ms), None
                return Sent("pending", answer.status, f"HTTP {answer.status}", ms), _retry_after(answer)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ms = (time.perf_counter() - t0) * 1000
            return Sent("pending", None, f"{type(exc).__name__}: {exc}"[:500] or "no answer", ms), None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trust_env=True)  # HTTPS_PROXY applies
        return self._session

    @staticmethod
    def _registry_now() -> datetime:
        return datetime.now(UTC)


def event_payload(event: EventRecord) -> dict[str, Any]:
    created = event.created_at.isoformat() if event.created_at is not None else None
    data = {
        "target": event.target,
        "result": event.result,
        "actor": event.actor,
        "detail": dict(event.detail),
    }
    return {"id": f"evt_{event.id}", "type": event.action, "created_at": created, "data": data}


def _retry_after(answer: aiohttp.ClientResponse) -> float | None:
    value = answer.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'url' is required: the http(s) URL deliveries are POSTed to", param="url")
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidRequest(f"'url' must be an http or https URL with a host, not {value!r}", param="url")
    return value


def _patterns(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        raise InvalidRequest(
            "'events' must be a non-empty list of event types or patterns, e.g. [\"deployment.*\"]",
            param="events",
        )
    for pattern in value:
        if not _PATTERN.match(pattern):
            raise InvalidRequest(f"{pattern!r} is not an event type or pattern", param="events")
    return tuple(dict.fromkeys(value))


def _description(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 200:
        raise InvalidRequest("'description' must be a string of at most 200 characters", param="description")
    return value
