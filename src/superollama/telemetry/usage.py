"""The usage ledger: one row per request, written in batches off the request path; aggregation; export.

``UsageLedger.add`` appends the record to an in-memory batch (no I/O, never blocks); a background task
writes the batch through the ``UsageStore`` every ``flush_rows`` rows or ``flush_seconds`` seconds,
whichever comes first. The batch is bounded (``max_pending``): past it a record is dropped, counted and
logged. ``close()`` writes everything still pending: a clean shutdown loses nothing. A failed write keeps
its rows for the next attempt (within the bound).

The store is the registry's ``usage`` repository (``registry.usage``), or anything with its two methods.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import orjson

from superollama.core import RequestRecord
from superollama.core.waits import wait_set

__all__ = [
    "GROUPINGS",
    "REQUEST_COLUMNS",
    "SUMMARY_COLUMNS",
    "UsageLedger",
    "UsageStore",
    "UsageSummary",
    "percentile",
    "record_row",
    "rows_csv",
    "rows_json",
    "summarize",
]

log = logging.getLogger("superollama.usage")

Grouping = Literal["key", "model", "day"]
GROUPINGS: tuple[str, ...] = ("key", "model", "day")
NO_KEY = "(no key)"


class UsageStore(Protocol):
    """Where ledger rows live (the registry's ``UsageRepository`` is one)."""

    async def insert_many(self, records: Sequence[RequestRecord]) -> int: ...

    async def query(self, *, since: datetime, until: datetime | None = None) -> list[RequestRecord]: ...


@dataclass(frozen=True)
class UsageSummary:
    """One group of the ledger: requests, errors, tokens, search units (rerank), cost and latency
    percentiles (milliseconds)."""

    group: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    search_units: int
    cost: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SUMMARY_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(UsageSummary))


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0…1) of already sorted values, linearly interpolated; ``None`` when empty."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _group(record: RequestRecord, by: str) -> str:
    if by == "key":
        return record.key_prefix or record.key_id or NO_KEY
    if by == "model":
        return record.model
    if by == "day":
        return datetime.fromtimestamp(record.started_at, UTC).date().isoformat()
    raise ValueError(f"group usage by one of {', '.join(GROUPINGS)}, not {by!r}")


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def summarize(records: Iterable[RequestRecord], by: str) -> list[UsageSummary]:
    """Aggregate ledger rows by key prefix, model or UTC day; ordered by group."""
    groups: dict[str, list[RequestRecord]] = {}
    for record in records:
        groups.setdefault(_group(record, by), []).append(record)
    out = []
    for name in sorted(groups):
        rows = groups[name]
        latencies = sorted(r.duration for r in rows)
        ttfts = sorted(r.ttft for r in rows if r.ttft is not None)
        out.append(
            UsageSummary(
                group=name,
                requests=len(rows),
                errors=sum(1 for r in rows if r.status >= 400),
                prompt_tokens=sum(r.prompt_tokens or 0 for r in rows),
                completion_tokens=sum(r.completion_tokens or 0 for r in rows),
                search_units=sum(r.search_units or 0 for r in rows),
                cost=round(sum(r.cost or 0.0 for r in rows), 9),
                latency_p50_ms=_ms(percentile(latencies, 0.50)),
                latency_p95_ms=_ms(percentile(latencies, 0.95)),
                ttft_p50_ms=_ms(percentile(ttfts, 0.50)),
            )
        )
    return out


def record_row(record: RequestRecord) -> dict[str, Any]:
    """A ledger row as exported (``by=request``): the record without captured content."""
    return {
        "created_at": datetime.fromtimestamp(record.started_at, UTC).isoformat(),
        "request_id": record.request_id,
        "key_id": record.key_id,
        "key_prefix": record.key_prefix,
        "protocol": record.protocol,
        "operation": record.operation,
        "model": record.model,
        "version": record.version,
        "instance": record.instance,
        "connection": record.connection,
        "node": record.node,
        "status": record.status,
        "stream": record.stream,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "usage_estimated": record.usage_estimated,
        "search_units": record.search_units,
        "ttft_ms": _ms(record.ttft),
        "latency_ms": _ms(record.duration),
        "cost": record.cost,
        "error_type": record.error_type,
    }


REQUEST_COLUMNS: tuple[str, ...] = tuple(
    record_row(
        RequestRecord(request_id="", protocol="", operation="", model="", status=0, started_at=0, duration=0)
    )
)


def rows_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV with a header line (``SUMMARY_COLUMNS`` or ``REQUEST_COLUMNS``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def rows_json(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return orjson.dumps(rows)


class UsageLedger:
    """Batches ledger rows and writes them off the request path. ``start()`` it, ``close()`` it."""

    def __init__(
        self,
        store: UsageStore,
        *,
        flush_rows: int = 500,
        flush_seconds: float = 2.0,
        max_pending: int = 100_000,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._flush_rows = max(1, flush_rows)
        self._flush_seconds = flush_seconds
        self._max_pending = max_pending
        self._on_drop = on_drop
        self._pending: list[RequestRecord] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.written = 0
        self.dropped = 0
        self._dropped_logged_at = 0.0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, record: RequestRecord) -> bool:
        """Queue one row (sync, never blocks); ``False`` when the ledger is full or closed."""
        if self._closed or len(self._pending) >= self._max_pending:
            self._drop(1)
            return False
        self._pending.append(record)
        if len(self._pending) >= self._flush_rows:
            self._wake.set()
        return True

    def _drop(self, count: int) -> None:
        self.dropped += count
        if self._on_drop is not None:
            self._on_drop(count)
        now = time.monotonic()
        if now - self._dropped_logged_at >= 10:
            self._dropped_logged_at = now
            log.warning("usage ledger full or closed: %d rows dropped so far", self.dropped)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage ledger")

    async def _run(self) -> None:
        while not self._closed:
            await self._sleep(self._flush_seconds)
            if self._closed:
                return  # close() writes the rest
            try:
                await self.flush()
            except Exception:
                log.exception("usage ledger: writing %d rows failed; retrying", len(self._pending))
                await self._sleep(self._flush_seconds)

    async def _sleep(self, seconds: float) -> None:
        """Until ``seconds`` pass or a full batch (or ``close``) wakes the writer."""
        await wait_set(self._wake, seconds)
        self._wake.clear()

    async def flush(self) -> int:
        """Write the rows pending now; returns how many. On failure the rows stay pending and it raises.

        Rows added while it writes wait for the next flush (a full batch, the timer, or a caller). A flush
        that chased them never ended under steady load: it wrote a transaction every few ms, of the few
        rows that came in during the last write, at five times the CPU a row of full batches."""
        written = 0
        async with self._lock:
            left = len(self._pending)
            while left > 0 and self._pending:
                batch = self._pending[: min(self._flush_rows, left)]
                del self._pending[: len(batch)]
                try:
                    await self._store.insert_many(batch)
                except BaseException:
                    self._pending[:0] = batch
                    excess = len(self._pending) - self._max_pending
                    if excess > 0:
                        del self._pending[:excess]  # keep the newest within the bound
                        self._drop(excess)
                    raise
                written += len(batch)
                left -= len(batch)
                self.written += len(batch)
        return written

    async def close(self) -> None:
        """Let the writer finish its batch, then write everything pending (one more try on failure).
        Rows added after ``close`` are dropped (counted)."""
        self._closed = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        for attempt in (1, 2):
            try:
                await self.flush()
                return
            except Exception:
                if attempt == 2:
                    log.exception("usage ledger: %d rows could not be written at close", len(self._pending))
                else:
                    await asyncio.sleep(0.5)

    async def query(self, *, since: datetime, until: datetime | None = None) -> list[RequestRecord]:
        """Ledger rows in ``[since, until)``, after writing what is pending (so they include the last
        requests)."""
        await self.flush()
        return await self._store.query(since=since, until=until)

    async def summary(self, by: str, since: datetime, until: datetime | None = None) -> list[UsageSummary]:
        """Aggregate by ``"key"``, ``"model"`` or ``"day"`` (ValueError for anything else)."""
        if by not in GROUPINGS:
            raise ValueError(f"group usage by one of {', '.join(GROUPINGS)}, not {by!r}")
        return summarize(await self.query(since=since, until=until), by)
