"""Usage ledger: batches by rows and by time, flush on close loses nothing, full queue drops are counted,
failed writes are retried; aggregation and export."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.waiting import wait_until

from superollama.core import RequestRecord
from superollama.settings import Settings
from superollama.telemetry import Telemetry, UsageLedger, summarize
from superollama.telemetry.usage import SUMMARY_COLUMNS, percentile, rows_csv, rows_json

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def rec(i: int = 0, **changes: object) -> RequestRecord:
    base = RequestRecord(
        request_id=f"r{i}",
        protocol="openai",
        operation="chat",
        model="smollm2:135m",
        status=200,
        started_at=T0 + i,
        duration=1.0,
        key_id="k1",
        key_prefix="so-aaaa",
        version="smollm2:135m",
        prompt_tokens=10,
        completion_tokens=20,
        cost=0.001,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class MemoryStore:
    """A UsageStore in memory that records each batch; ``fail`` makes the next writes raise."""

    def __init__(self, delay: float = 0.0) -> None:
        self.rows: list[RequestRecord] = []
        self.batches: list[int] = []
        self.fail = 0
        self.delay = delay

    async def insert_many(self, records: Sequence[RequestRecord]) -> int:
        if self.delay:
            await asyncio.sleep(self.delay)  # a stand-in: a database that takes its time
        if self.fail:
            self.fail -= 1
            raise OSError("database is away")
        self.rows.extend(records)
        self.batches.append(len(records))
        return len(records)

    async def query(self, *, since: datetime, until: datetime | None = None) -> list[RequestRecord]:
        lo, hi = since.timestamp(), until.timestamp() if until else float("inf")
        return [r for r in self.rows if lo <= r.started_at < hi]


async def test_flush_on_close_loses_nothing_with_10k_records() -> None:
    store = MemoryStore(delay=0.001)
    ledger = UsageLedger(store, flush_rows=500, flush_seconds=60)
    await ledger.start()
    for i in range(10_000):
        assert ledger.add(rec(i))
        if i % 1000 == 0:
            await asyncio.sleep(0)  # not a wait: the writer runs now and then, as it would under load
    await ledger.close()
    assert [r.request_id for r in store.rows] == [f"r{i}" for i in range(10_000)]
    assert max(store.batches) == 500
    assert ledger.written == 10_000 and ledger.dropped == 0 and ledger.pending == 0
    assert not ledger.add(rec(10_001))  # closed: refused and counted
    assert ledger.dropped == 1


async def test_a_full_batch_wakes_the_writer() -> None:
    store = MemoryStore()
    ledger = UsageLedger(store, flush_rows=3, flush_seconds=60)  # the timer cannot fire during the test
    await ledger.start()
    try:
        for i in range(3):
            ledger.add(rec(i))
        await wait_until(lambda: store.batches == [3], what="the full batch written")
        ledger.add(rec(3))
        # The writer wrote the batch and is parked on its 60 s timer again; nothing wakes it for one row.
        assert ledger.pending == 1 and not ledger._wake.is_set()
        assert store.batches == [3]
    finally:
        await ledger.close()
    assert store.batches == [3, 1]  # close writes the rest


class GatedStore(MemoryStore):
    """Each write waits for a permit from the test (``calls``: the batch sizes asked for, in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.permits = asyncio.Semaphore(0)

    async def insert_many(self, records: Sequence[RequestRecord]) -> int:
        self.calls.append(len(records))
        await self.permits.acquire()
        return await super().insert_many(records)


async def test_rows_that_arrive_during_a_write_wait_for_the_next_full_batch() -> None:
    """Under steady load rows keep arriving while a batch is written. The writer must not chase them:
    it used to write them at once, a transaction of a few rows every few ms, never parking."""
    store = GatedStore()
    ledger = UsageLedger(store, flush_rows=10, flush_seconds=60)  # the timer cannot fire during the test
    await ledger.start()
    try:
        for i in range(10):
            ledger.add(rec(i))
        await wait_until(lambda: store.calls == [10], what="the full batch being written")
        for i in range(10, 13):
            ledger.add(rec(i))  # arrive during the write
        store.permits.release()
        await wait_until(lambda: ledger.written == 10, what="the first batch written")
        # The writer's next step after counting the batch was either the next write (it chased) or its
        # timer: it is on the timer, the three rows wait.
        assert store.calls == [10] and ledger.pending == 3
        for i in range(13, 20):
            ledger.add(rec(i))
        await wait_until(lambda: store.calls == [10, 10], what="the second full batch being written")
        store.permits.release()
        await wait_until(lambda: ledger.written == 20, what="the second batch written")
    finally:
        store.permits.release()
        await ledger.close()
    assert store.calls == [10, 10]
    assert [r.request_id for r in store.rows] == [f"r{i}" for i in range(20)]


async def test_a_flush_writes_what_was_pending_when_it_was_called() -> None:
    store = GatedStore()
    ledger = UsageLedger(store, flush_rows=10, flush_seconds=60)
    for i in range(4):
        ledger.add(rec(i))
    flushing = asyncio.create_task(ledger.flush())
    await wait_until(lambda: store.calls == [4], what="the flush writing")
    ledger.add(rec(4))
    store.permits.release()
    await wait_until(flushing.done, what="the flush done after its one write")
    assert flushing.result() == 4 and ledger.pending == 1  # the late row is the next flush's
    store.permits.release()
    assert await ledger.flush() == 1 and store.calls == [4, 1]


async def test_a_partial_batch_is_written_when_time_passes() -> None:
    store = MemoryStore()
    ledger = UsageLedger(store, flush_rows=3, flush_seconds=0.2)
    await ledger.start()
    try:
        ledger.add(rec(0))
        assert not ledger._wake.is_set()  # one row: only the timer writes it
        # time itself is under test: the flush_seconds timer fires and writes the partial batch
        await wait_until(lambda: store.batches == [1], what="the timer's write of one row")
    finally:
        await ledger.close()


async def test_full_queue_drops_are_counted_in_metrics() -> None:
    store = MemoryStore()
    telemetry = Telemetry(Settings(usage_flush_rows=10_000, usage_flush_seconds=60), usage_store=store)
    assert telemetry.usage is not None
    telemetry.usage._max_pending = 5  # a tiny bound for the test
    for i in range(8):
        telemetry.record(rec(i))
    assert telemetry.usage.dropped == 3
    assert telemetry.metrics is not None
    families = {f.name: f for f in text_string_to_metric_families(telemetry.metrics.render().decode())}
    (sample,) = families["superollama_telemetry_dropped"].samples
    assert (sample.labels, sample.value) == ({"sink": "usage"}, 3)
    await telemetry.close()
    assert [r.request_id for r in store.rows] == [f"r{i}" for i in range(5)]


async def test_failed_write_is_retried_and_nothing_is_lost() -> None:
    store = MemoryStore()
    store.fail = 2
    ledger = UsageLedger(store, flush_rows=2, flush_seconds=0.05)
    await ledger.start()
    for i in range(5):
        ledger.add(rec(i))
    # The writer fails twice and retries on its own (close() is not what writes them).
    await wait_until(lambda: len(store.rows) == 5, what="the rows written after two failures")
    assert store.fail == 0
    await ledger.close()
    assert [r.request_id for r in store.rows] == [f"r{i}" for i in range(5)]


async def test_unauthenticated_unrouted_requests_stay_out_of_the_ledger() -> None:
    store = MemoryStore()
    telemetry = Telemetry(Settings(), usage_store=store)
    await telemetry.start()
    telemetry.record(rec(1, key_id=None, version=None, status=401, error_type="invalid_api_key"))
    telemetry.record(rec(2, key_id=None))  # no key (auth off) but served: usage
    telemetry.record(rec(3, version=None, status=404, error_type="model_not_found"))  # a key: counted
    await telemetry.close()
    assert [r.request_id for r in store.rows] == ["r2", "r3"]


def test_percentile() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.95) == pytest.approx(95.05)


def test_summarize_by_key_model_day() -> None:
    rows = [rec(i, duration=i / 100) for i in range(1, 101)]  # 10 ms … 1 s
    rows += [rec(200, key_id=None, key_prefix=None, model="qwen:0.5b", status=500, cost=None, ttft=0.5)]
    rows += [rec(86_400, model="qwen:0.5b", prompt_tokens=None, completion_tokens=None)]  # the next day
    by_key = {s.group: s for s in summarize(rows, "key")}
    assert set(by_key) == {"so-aaaa", "(no key)"}
    k = by_key["so-aaaa"]
    assert (k.requests, k.errors, k.prompt_tokens, k.completion_tokens) == (101, 0, 1000, 2000)
    assert k.cost == pytest.approx(0.101)
    assert k.latency_p50_ms == pytest.approx(510.0)
    assert by_key["(no key)"].errors == 1 and by_key["(no key)"].ttft_p50_ms == 500.0
    assert [s.group for s in summarize(rows, "model")] == ["qwen:0.5b", "smollm2:135m"]
    by_day = summarize(rows, "day")
    assert [(s.group, s.requests) for s in by_day] == [("2026-01-01", 101), ("2026-01-02", 1)]
    with pytest.raises(ValueError):
        summarize(rows, "week")


async def test_summary_flushes_pending_rows_first() -> None:
    store = MemoryStore()
    ledger = UsageLedger(store, flush_rows=1000, flush_seconds=60)
    await ledger.start()
    for i in range(3):
        ledger.add(rec(i))
    (summary,) = await ledger.summary("model", datetime.fromtimestamp(T0, UTC))
    assert summary.requests == 3
    await ledger.close()


def test_csv_and_json_export() -> None:
    rows = [s.as_dict() for s in summarize([rec(1), rec(2, model="qwen:0.5b")], "model")]
    text = rows_csv(rows, SUMMARY_COLUMNS)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [r["group"] for r in parsed] == ["qwen:0.5b", "smollm2:135m"]
    assert list(parsed[0]) == list(SUMMARY_COLUMNS)
    assert parsed[0]["requests"] == "1" and parsed[0]["prompt_tokens"] == "10"
    assert orjson.loads(rows_json(rows)) == rows
    assert rows_csv([], SUMMARY_COLUMNS).strip() == ",".join(SUMMARY_COLUMNS)
