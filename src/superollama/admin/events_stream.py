"""``GET /admin/v1/events/stream``: the event log as a live Server-Sent Events feed (the web UI's events
page, or ``curl -N``).

Each event is one SSE message, ``id:`` its event id and ``data:`` its JSON (``event_json``). The stream
opens with the latest ``backlog`` events (default 20, oldest first), then sends each new one. A client
that reconnects with ``Last-Event-ID`` (EventSource does) gets only what came after it. ``target`` and
``action`` filter as on ``GET /admin/v1/events``. ``timeout`` (seconds, as Kubernetes' watch
``timeoutSeconds``) ends the stream after that long, whatever came: for a script that wants what happens
within a window, and for a client that must not hold a request open for ever.

Why it polls the registry (every ``POLL`` seconds) rather than listening in memory: events are written by
every process that shares the registry — the primary, the replicas, the CLI's offline commands — and the
registry is the one place that sees them all. The poll reads by time with an index, off the data plane.
A comment line every ``KEEPALIVE`` seconds keeps proxies from closing a quiet stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from datetime import datetime

import orjson
from aiohttp import web

from superollama.admin.routes import PREFIX
from superollama.admin.serialize import event_json
from superollama.control import Controller
from superollama.core import EventRecord
from superollama.errors import InvalidRequest

__all__ = ["POLL", "EventStreamRoutes"]

POLL = 1.0  # seconds between reads of the event log
KEEPALIVE = 15.0  # seconds between comment lines on a quiet stream
_PAGE = 500


class EventStreamRoutes:
    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def register(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/events/stream", self.stream)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            backlog = int(q.get("backlog", "20"))
            last_id = int(request.headers.get("Last-Event-ID", "0") or 0)
        except ValueError:
            raise InvalidRequest("'backlog' and Last-Event-ID must be integers", param="backlog") from None
        ends = _deadline(q.get("timeout"))
        filters = {"target": q.get("target") or None, "action": q.get("action") or None}
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        first = await self._controller.events(limit=_PAGE if last_id else max(0, backlog), **filters)
        since: datetime | None = None
        quiet_since = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            await response.write(b"retry: 2000\n\n")
            while True:
                fresh = sorted((e for e in first if (e.id or 0) > last_id), key=lambda e: e.id or 0)
                for event in fresh:
                    await response.write(_message(event))
                    last_id = event.id or last_id
                    since = event.created_at or since
                if time.monotonic() >= ends:
                    break
                if fresh:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= KEEPALIVE:
                    await response.write(b": keep-alive\n\n")
                    quiet_since = time.monotonic()
                if since is None:  # nothing seen yet: start from the newest event there is
                    newest = await self._controller.events(limit=1)
                    last_id = max(last_id, newest[0].id or 0) if newest and not first else last_id
                    since = newest[0].created_at if newest else None
                await asyncio.sleep(min(POLL, max(0.0, ends - time.monotonic())))
                first = await self._controller.events(limit=_PAGE, since=since, **filters)
        return response


def _deadline(timeout: str | None) -> float:
    """When a stream with this ``timeout`` query parameter ends, on the monotonic clock."""
    if timeout is None:
        return math.inf
    try:
        seconds = float(timeout)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise InvalidRequest("'timeout' must be a positive number of seconds", param="timeout")
    return time.monotonic() + seconds


def _message(event: EventRecord) -> bytes:
    return b"id: %d\nevent: event\ndata: %s\n\n" % (event.id or 0, orjson.dumps(event_json(event)))
