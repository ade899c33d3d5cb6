"""Webhooks and their delivery log.

A delivery is an outbox row: made from an event (or a ping), sent by the reconciler leader, retried on its
``next_at`` until it is ``delivered`` or ``failed``. ``(webhook_id, event_id)`` is unique, so turning the
same event into deliveries twice — the leader re-reads a window of the event log each time, because on
Postgres an event with a lower id may commit after a higher one was read — makes nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import delete, func, select, tuple_, update

from superollama.core import EventRecord
from superollama.registry._base import Database, plain
from superollama.registry.schema import events, webhook_cursor, webhook_deliveries, webhooks

__all__ = ["Delivery", "WebhookRecord", "WebhookRepository", "matches"]

_CURSOR = "events"


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    id: str
    url: str
    events: tuple[str, ...]
    secret: str  # sealed
    description: str = ""
    enabled: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    webhook_id: str
    event_id: int | None
    action: str
    payload: dict[str, Any]
    state: str  # pending, delivered, failed
    attempts: int
    next_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float | None
    created_at: datetime
    updated_at: datetime


class WebhookRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- hooks -------------------------------------------------------------------------------------------
    async def add(self, hook: WebhookRecord) -> WebhookRecord:
        now = self._db.now()
        values = {
            "id": hook.id,
            "url": hook.url,
            "events": list(hook.events),
            "secret": hook.secret,
            "description": hook.description,
            "enabled": hook.enabled,
            "created_at": now,
            "updated_at": now,
        }
        async with self._db.write("adding a webhook") as conn:
            await conn.execute(webhooks.insert().values(values))
        return _hook(values)

    async def get(self, hook_id: str) -> WebhookRecord | None:
        async with self._db.read("reading a webhook") as conn:
            row = (await conn.execute(select(webhooks).where(webhooks.c.id == hook_id))).first()
        return None if row is None else _hook(row._mapping)

    async def all(self) -> list[WebhookRecord]:
        async with self._db.read("listing webhooks") as conn:
            rows = (await conn.execute(select(webhooks).order_by(webhooks.c.created_at, webhooks.c.id))).all()
        return [_hook(r._mapping) for r in rows]

    async def update(self, hook_id: str, **fields: Any) -> WebhookRecord | None:
        """Change ``url``, ``events``, ``description`` or ``enabled``; None when there is no such hook."""
        values = {k: list(v) if k == "events" else v for k, v in fields.items()}
        values["updated_at"] = self._db.now()
        async with self._db.write("changing a webhook") as conn:
            stmt = update(webhooks).where(webhooks.c.id == hook_id).values(values).returning(*webhooks.c)
            row = (await conn.execute(stmt)).first()
        return None if row is None else _hook(row._mapping)

    async def remove(self, hook_id: str) -> bool:
        """Delete the hook and its delivery log."""
        async with self._db.write("removing a webhook") as conn:
            await conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == hook_id))
            result = await conn.execute(delete(webhooks).where(webhooks.c.id == hook_id))
        return bool(result.rowcount)

    # -- the event log, read into deliveries ---------------------------------------------------------------
    async def cursor(self) -> int | None:
        """The highest event id already turned into deliveries (None: never read yet)."""
        stmt = select(webhook_cursor.c.event_id).where(webhook_cursor.c.name == _CURSOR)
        async with self._db.read("reading the webhook cursor") as conn:
            value = (await conn.execute(stmt)).scalar()
        return None if value is None else int(value)

    async def last_event_id(self) -> int:
        async with self._db.read("reading the event log") as conn:
            return int((await conn.execute(select(func.coalesce(func.max(events.c.id), 0)))).scalar() or 0)

    async def enqueue(
        self, hooks: Sequence[WebhookRecord], new: Sequence[EventRecord], cursor: int, payloads: Sequence[Any]
    ) -> int:
        """Make the deliveries of ``new`` events (``payloads[i]`` for ``new[i]``) for the ``hooks`` they
        match, skipping those made already, and move the cursor to ``cursor``; returns how many were made."""
        now = self._db.now()
        wanted = [
            (hook.id, event, payload)
            for event, payload in zip(new, payloads, strict=True)
            for hook in hooks
            if matches(hook, event)
        ]
        made = 0
        async with self._db.write("queueing webhook deliveries") as conn:
            if wanted:
                pairs = {(h, e.id) for h, e, _ in wanted}
                stmt = select(webhook_deliveries.c.webhook_id, webhook_deliveries.c.event_id).where(
                    tuple_(webhook_deliveries.c.webhook_id, webhook_deliveries.c.event_id).in_(pairs)
                )
                done = {(r[0], r[1]) for r in (await conn.execute(stmt)).all()}
                rows = [
                    _pending(hook_id, event.id, event.action, payload, now)
                    for hook_id, event, payload in wanted
                    if (hook_id, event.id) not in done
                ]
                if rows:
                    await conn.execute(webhook_deliveries.insert(), rows)
                made = len(rows)
            values = {"name": _CURSOR, "event_id": cursor}
            await conn.execute(self._db.upsert(webhook_cursor, values, ["name"], ["event_id"]))
        return made

    async def events_after(self, after: int, limit: int) -> list[EventRecord]:
        """Events with an id above ``after``, oldest first."""
        stmt = select(events).where(events.c.id > after).order_by(events.c.id).limit(limit)
        async with self._db.read("reading the event log") as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            EventRecord(
                action=m["action"],
                target=m["target"],
                result=m["result"],
                actor=m["actor"],
                detail=dict(m["detail"]),
                id=int(m["id"]),
                created_at=m["created_at"],
            )
            for m in (r._mapping for r in rows)
        ]

    # -- deliveries ---------------------------------------------------------------------------------------
    async def add_ping(self, hook_id: str, payload: dict[str, Any]) -> Delivery:
        row = _pending(hook_id, None, "webhook.ping", payload, self._db.now())
        async with self._db.write("queueing a webhook ping") as conn:
            stmt = webhook_deliveries.insert().values(row).returning(*webhook_deliveries.c)
            return _delivery((await conn.execute(stmt)).one()._mapping)

    async def due(self, now: datetime, limit: int) -> list[Delivery]:
        """Pending deliveries whose time has come, oldest first."""
        stmt = (
            select(webhook_deliveries)
            .where(webhook_deliveries.c.state == "pending", webhook_deliveries.c.next_at <= now)
            .order_by(webhook_deliveries.c.next_at, webhook_deliveries.c.id)
            .limit(limit)
        )
        async with self._db.read("reading due webhook deliveries") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_delivery(r._mapping) for r in rows]

    async def next_due(self) -> datetime | None:
        """When the first pending delivery is due (None: none is pending)."""
        stmt = select(func.min(webhook_deliveries.c.next_at)).where(webhook_deliveries.c.state == "pending")
        async with self._db.read("reading the next webhook delivery's time") as conn:
            value = (await conn.execute(stmt)).scalar()
        return None if value is None else value

    async def attempted(
        self,
        delivery_id: int,
        *,
        state: str,
        attempts: int,
        next_at: datetime,
        status_code: int | None,
        error: str | None,
        duration_ms: float,
    ) -> None:
        values = {
            "state": state,
            "attempts": attempts,
            "next_at": next_at,
            "status_code": status_code,
            "error": error,
            "duration_ms": duration_ms,
            "updated_at": self._db.now(),
        }
        async with self._db.write("recording a webhook delivery") as conn:
            await conn.execute(
                update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id).values(values)
            )

    async def deliveries(self, hook_id: str, *, limit: int = 50, state: str | None = None) -> list[Delivery]:
        """The hook's delivery log, newest first."""
        stmt = (
            select(webhook_deliveries)
            .where(webhook_deliveries.c.webhook_id == hook_id)
            .order_by(webhook_deliveries.c.id.desc())
            .limit(max(0, limit))
        )
        if state is not None:
            stmt = stmt.where(webhook_deliveries.c.state == state)
        async with self._db.read("listing webhook deliveries") as conn:
            rows = (await conn.execute(stmt)).all()
        return [_delivery(r._mapping) for r in rows]


def matches(hook: WebhookRecord, event: EventRecord) -> bool:
    """Whether ``hook`` wants ``event``: enabled, made before it, and one of its patterns names its action."""
    if not hook.enabled:
        return False
    if hook.created_at is not None and event.created_at is not None and event.created_at < hook.created_at:
        return False
    return any(fnmatchcase(event.action, pattern) for pattern in hook.events)


def _pending(hook_id: str, event_id: int | None, action: str, payload: Any, now: datetime) -> dict[str, Any]:
    return {
        "webhook_id": hook_id,
        "event_id": event_id,
        "action": action,
        "payload": plain(payload),
        "state": "pending",
        "attempts": 0,
        "next_at": now,
        "status_code": None,
        "error": None,
        "duration_ms": None,
        "created_at": now,
        "updated_at": now,
    }


def _hook(m: Any) -> WebhookRecord:
    return WebhookRecord(
        id=m["id"],
        url=m["url"],
        events=tuple(m["events"]),
        secret=m["secret"],
        description=m["description"],
        enabled=bool(m["enabled"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def _delivery(m: Any) -> Delivery:
    return Delivery(
        id=int(m["id"]),
        webhook_id=m["webhook_id"],
        event_id=None if m["event_id"] is None else int(m["event_id"]),
        action=m["action"],
        payload=dict(m["payload"]),
        state=m["state"],
        attempts=int(m["attempts"]),
        next_at=m["next_at"],
        status_code=m["status_code"],
        error=m["error"],
        duration_ms=m["duration_ms"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )
