"""Admin API for the usage ledger: ``GET /admin/v1/usage?by=key|model|day|request&since=24h&format=json|csv``.

``by=key|model|day`` aggregates (requests, errors, tokens, cost, p50/p95 latency, p50 TTFT); ``by=request``
exports the rows themselves. ``since`` (default 24h) and ``until`` take 30m, 24h, 7d or an ISO time.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from superollama.admin.routes import PREFIX
from superollama.errors import InvalidRequest, NotFound
from superollama.telemetry.usage import (
    GROUPINGS,
    REQUEST_COLUMNS,
    SUMMARY_COLUMNS,
    UsageLedger,
    record_row,
    rows_csv,
)

__all__ = ["UsageRoutes", "parse_time"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BY = (*GROUPINGS, "request")


def parse_time(value: str, param: str, now: datetime | None = None) -> datetime:
    """``30m``, ``24h``, ``7d``, ``2w`` (that long ago) or an ISO time (UTC unless it says otherwise)."""
    now = now or datetime.now(UTC)
    with contextlib.suppress(ValueError, KeyError, IndexError):
        return now - timedelta(seconds=float(value[:-1]) * _UNITS[value[-1]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{param}' must be like 24h, 30m, 7d or an ISO time", param=param) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class UsageRoutes:
    def __init__(self, ledger: UsageLedger | None) -> None:
        self._ledger = ledger

    def register(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/usage", self.usage)

    async def usage(self, request: web.Request) -> web.Response:
        if self._ledger is None:
            raise NotFound("the usage ledger is off")
        q = request.query
        by = q.get("by", "model")
        if by not in _BY:
            raise InvalidRequest(f"'by' must be one of {', '.join(_BY)}", param="by")
        fmt = q.get("format", "json")
        if fmt not in ("json", "csv"):
            raise InvalidRequest("'format' must be json or csv", param="format")
        since = parse_time(q.get("since") or "24h", "since")
        until = parse_time(q["until"], "until") if q.get("until") else None
        if by == "request":
            rows = [record_row(r) for r in await self._ledger.query(since=since, until=until)]
        else:
            rows = [s.as_dict() for s in await self._ledger.summary(by, since, until)]
        if fmt == "csv":
            return web.Response(
                text=rows_csv(rows, REQUEST_COLUMNS if by == "request" else SUMMARY_COLUMNS),
                content_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="usage-{by}.csv"'},
            )
        body: dict[str, Any] = {
            "by": by,
            "since": since.isoformat(),
            "until": until.isoformat() if until else None,
            "rows": rows,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")
