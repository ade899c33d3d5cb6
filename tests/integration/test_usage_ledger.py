"""The usage ledger on real databases (a SQLite file and the PostgreSQL server CI starts): batched inserts
through ``Telemetry``, aggregation by key/model/day, CSV and JSON export through the admin API.

Each Postgres test runs in a fresh random schema, dropped afterwards; an unreachable server fails.
"""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from tests.databases import postgres_schema, schema_url

from superollama.admin.usage import UsageRoutes, parse_time
from superollama.core import RequestRecord
from superollama.errors import InvalidRequest, RegistryError
from superollama.gateway import error_middleware
from superollama.registry import Registry, open_registry
from superollama.registry import _usage as usage_repository
from superollama.registry._usage import _created_at
from superollama.registry.schema import usage
from superollama.settings import Settings
from superollama.telemetry import Telemetry
from superollama.telemetry.usage import REQUEST_COLUMNS, SUMMARY_COLUMNS

DAY1 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()
DAY2 = DAY1 + 86_400


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def registry(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> AsyncIterator[Registry]:
    if request.param == "sqlite":
        reg = await open_registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
        try:
            yield reg
        finally:
            await reg.close()
        return
    async with postgres_schema(pg_url, "test_usage") as schema:
        reg = await open_registry(schema_url(pg_url, schema))
        try:
            yield reg
        finally:
            await reg.close()


def rec(i: int, **changes: Any) -> RequestRecord:
    base = RequestRecord(
        request_id=f"r{i}",
        protocol="openai",
        operation="chat",
        model="smollm2:135m",
        status=200,
        started_at=DAY1 + i,
        duration=(i % 100 + 1) / 100,  # 10 ms … 1 s
        stream=i % 2 == 0,
        key_id="k1",
        key_prefix="so-aaaa1111",
        version="smollm2:135m",
        instance="i-1",
        node="local",
        ttft=0.05,
        prompt_tokens=10,
        completion_tokens=20,
        cost=0.001,
        input="never stored",
        output="never stored either",
    )
    return replace(base, **changes)


def workload() -> list[RequestRecord]:
    rows = [rec(i) for i in range(200)]
    rows += [
        rec(1000 + i, key_id="k2", key_prefix="so-bbbb2222", model="qwen:0.5b", version="qwen:0.5b")
        for i in range(50)
    ]
    rows += [
        rec(2000, key_id=None, key_prefix=None, status=502, error_type="upstream_error", cost=None, ttft=None)
    ]
    rows += [
        rec(3000 + i, started_at=DAY2 + i, prompt_tokens=None, completion_tokens=None) for i in range(10)
    ]
    return rows


async def fill(registry: Registry, rows: list[RequestRecord]) -> Telemetry:
    telemetry = Telemetry(Settings(usage_flush_rows=64, usage_flush_seconds=0.05), usage_store=registry.usage)
    await telemetry.start()
    for r in rows:
        telemetry.record(r)
    await telemetry.close()
    return telemetry


async def test_round_trip_and_aggregates(registry: Registry) -> None:
    rows = workload()
    telemetry = await fill(registry, rows)
    assert telemetry.usage is not None and telemetry.usage.written == len(rows)

    since = datetime.fromtimestamp(DAY1 - 1, UTC)
    stored = await registry.usage.query(since=since)
    assert [r.request_id for r in stored] == [r.request_id for r in rows]
    first = stored[0]
    assert first == replace(rows[0], input=None, output=None)  # every column back, content never stored
    assert stored[-11].error_type == "upstream_error" and stored[-11].cost is None
    assert len(await registry.usage.query(since=since, until=datetime.fromtimestamp(DAY2, UTC))) == 251

    ledger = telemetry.usage
    by_key = {s.group: s for s in await ledger.summary("key", since)}
    assert set(by_key) == {"so-aaaa1111", "so-bbbb2222", "(no key)"}
    a = by_key["so-aaaa1111"]
    assert (a.requests, a.errors, a.prompt_tokens, a.completion_tokens) == (210, 0, 2000, 4000)
    assert a.cost == pytest.approx(0.21)
    assert by_key["(no key)"].errors == 1

    by_model = {s.group: s for s in await ledger.summary("model", since)}
    assert by_model["qwen:0.5b"].requests == 50 and by_model["smollm2:135m"].requests == 211
    smol = by_model["smollm2:135m"]
    assert smol.latency_p50_ms == pytest.approx(500.0, abs=20)
    assert smol.latency_p95_ms == pytest.approx(950.0, abs=20)
    assert smol.ttft_p50_ms == pytest.approx(50.0)

    by_day = await ledger.summary("day", since)
    assert [(s.group, s.requests) for s in by_day] == [("2026-03-01", 251), ("2026-03-02", 10)]


@pytest.fixture
async def admin(registry: Registry) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    telemetry = await fill(registry, workload())
    app = web.Application(middlewares=[error_middleware])
    UsageRoutes(telemetry.usage).register(app)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_admin_json_and_csv(admin: TestClient[web.Request, web.Application]) -> None:
    since = "2026-03-01T00:00:00+00:00"
    response = await admin.get("/admin/v1/usage", params={"by": "model", "since": since})
    assert response.status == 200
    body = await response.json()
    assert body["by"] == "model"
    assert [(r["group"], r["requests"]) for r in body["rows"]] == [("qwen:0.5b", 50), ("smollm2:135m", 211)]
    assert set(body["rows"][0]) == set(SUMMARY_COLUMNS)

    response = await admin.get("/admin/v1/usage", params={"by": "day", "since": since, "format": "csv"})
    assert response.status == 200 and response.content_type == "text/csv"
    parsed = list(csv.DictReader(io.StringIO(await response.text())))
    assert [(r["group"], r["requests"]) for r in parsed] == [("2026-03-01", "251"), ("2026-03-02", "10")]

    response = await admin.get(
        "/admin/v1/usage",
        params={"by": "request", "since": since, "until": "2026-03-01T12:00:05Z", "format": "csv"},
    )
    parsed = list(csv.DictReader(io.StringIO(await response.text())))
    assert list(parsed[0]) == list(REQUEST_COLUMNS)
    assert [r["request_id"] for r in parsed] == ["r0", "r1", "r2", "r3", "r4"]
    assert "never stored" not in await response.text()


async def test_admin_refuses_bad_parameters(admin: TestClient[web.Request, web.Application]) -> None:
    for params, param in (
        ({"by": "week"}, "by"),
        ({"format": "xml"}, "format"),
        ({"since": "soon"}, "since"),
    ):
        response = await admin.get("/admin/v1/usage", params=params)
        assert response.status == 400, params
        assert (await response.json())["error"]["param"] == param


async def test_admin_without_a_ledger() -> None:
    app = web.Application(middlewares=[error_middleware])
    UsageRoutes(None).register(app)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/admin/v1/usage")).status == 404


def test_parse_time() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_time("24h", "since", now) == now - timedelta(hours=24)
    assert parse_time("2w", "since", now) == now - timedelta(days=14)
    assert parse_time("2026-02-01T00:00:00", "since", now) == datetime(2026, 2, 1, tzinfo=UTC)
    with pytest.raises(InvalidRequest):
        parse_time("soon", "since", now)


async def test_cli_usage_through_the_admin_api(registry: Registry, tmp_path: Path) -> None:
    import superollama.cli.usage  # registers the command
    from superollama.cli.main import cli

    telemetry = await fill(registry, workload())
    app = web.Application(middlewares=[error_middleware])
    UsageRoutes(telemetry.usage).register(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    assert superollama.cli.usage.usage.name == "usage"

    def invoke(*args: str) -> str:
        base = ["--url", url, "--home", str(tmp_path), "usage", "--since", "2026-03-01T00:00:00Z"]
        result = CliRunner(env={"COLUMNS": "160"}).invoke(cli, [*base, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    try:
        as_csv = await asyncio.to_thread(invoke, "--by", "key", "--csv")
        as_json = await asyncio.to_thread(invoke, "--by", "day", "--json")
        table = await asyncio.to_thread(invoke, "--by", "model")
    finally:
        await runner.cleanup()
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert [(r["group"], r["requests"]) for r in rows] == [
        ("(no key)", "1"),
        ("so-aaaa1111", "210"),
        ("so-bbbb2222", "50"),
    ]
    assert [(r["group"], r["requests"]) for r in orjson.loads(as_json)] == [
        ("2026-03-01", 251),
        ("2026-03-02", 10),
    ]
    assert "MODEL" in table and "smollm2:135m" in table and "211" in table


async def test_search_units_round_trip_and_add_up(registry: Registry) -> None:
    """Rerank requests are billed in search units as well as tokens (migration 12's column)."""
    rows = [
        rec(4000 + i, operation="rerank", model="reranker:tiny", completion_tokens=0, search_units=i + 1)
        for i in range(3)
    ]
    rows.append(rec(4010))  # a chat: no search units
    telemetry = await fill(registry, rows)
    stored = await registry.usage.query(since=datetime.fromtimestamp(DAY1 - 1, UTC))
    assert [r.search_units for r in stored] == [1, 2, 3, None]
    assert telemetry.usage is not None
    summary = {s.group: s for s in await telemetry.usage.summary("model", datetime.fromtimestamp(DAY1, UTC))}
    assert (summary["reranker:tiny"].search_units, summary["smollm2:135m"].search_units) == (6, 0)


async def test_start_times_are_stored_as_any_statement_stores_them(registry: Registry) -> None:
    """The batch insert's ``created_at`` must be what SQLAlchemy itself writes for
    ``datetime.fromtimestamp`` (on SQLite, the very same text, since windows compare it as text), rounded
    to the microsecond the same way, carries and ties included."""
    # .123456|4 and .123456|6 round apart, 1.999999|6 carries into the next second, 3 + 1/128 s is a tie
    # (7812.5 µs) that goes to the even 7812
    times = [DAY1 + 0.1234564, DAY1 + 0.1234566, DAY1 + 1.9999996, DAY1 + 2.0000004, DAY1 + 3 + 1 / 128]
    kinds = [  # every column's values, None included
        {"stream": True, "usage_estimated": True, "cost": 0.25, "error_type": "x", "load_wait": 0.5},
        {"key_id": None, "key_prefix": None, "prompt_tokens": None, "ttft": None, "cost": 1},
    ]
    made = [rec(i, started_at=t, **kinds[i % 2]) for i, t in enumerate(times)]
    # and a hundred more rows, of every kind
    made += [
        rec(0, request_id=f"x{i}", started_at=DAY1 + 10 + i * 0.0013, **kinds[i % 2]) for i in range(100)
    ]
    await registry.usage.insert_many(made)
    async with registry.usage._db.write("the same rows through SQLAlchemy") as conn:
        await conn.execute(
            usage.insert(), [_sqlalchemy_values(replace(r, request_id="s" + r.request_id)) for r in made]
        )
        stored = (await conn.exec_driver_sql("SELECT * FROM usage ORDER BY id")).all()
    ours, theirs = stored[: len(made)], stored[len(made) :]
    # as stored, column by column (ids and request ids aside): the same text on SQLite, values on Postgres
    assert [(row[1], *row[3:]) for row in ours] == [(row[1], *row[3:]) for row in theirs]
    back = await registry.usage.query(since=datetime.fromtimestamp(DAY1, UTC))
    expected = [datetime.fromtimestamp(t, UTC).timestamp() for t in times]
    assert [r.started_at for r in back if r.request_id.startswith("r")] == expected
    # a window cut between two microseconds of one second holds exactly the rows before it
    cut = datetime.fromtimestamp(DAY1, UTC).replace(microsecond=123457)
    inside = await registry.usage.query(since=datetime.fromtimestamp(DAY1, UTC), until=cut)
    assert sorted(r.request_id for r in inside) == ["r0", "sr0"]


def _sqlalchemy_values(r: RequestRecord) -> dict[str, Any]:
    """A ledger row as SQLAlchemy's own ``insert`` takes it: the reference for the ledger's fast path."""
    values = {c.name: getattr(r, c.name, None) for c in usage.columns if c.name != "id"}
    return {**values, "created_at": datetime.fromtimestamp(r.started_at, UTC), "latency": r.duration}


async def test_a_batch_of_several_turns_arrives_whole_and_in_order(registry: Registry) -> None:
    """A batch larger than the rows built per turn of the event loop (100) comes back whole: every
    column of every row, in order."""
    rows = workload()[:250]
    assert await registry.usage.insert_many(rows) == 250
    stored = await registry.usage.query(since=datetime.fromtimestamp(DAY1 - 1, UTC))
    assert stored == [replace(r, input=None, output=None) for r in rows]


def test_created_at_falls_back_to_the_columns_own_conversion_where_the_fast_text_differs() -> None:
    """Should a dialect store times differently (here: ISO text with a ``T``), the ledger binds what the
    column's processor makes, not its own text."""

    def iso(value: datetime) -> str:
        return value.replace(tzinfo=None).isoformat(sep="T", timespec="microseconds")

    created_at = _created_at(SimpleNamespace(name="sqlite"), iso)  # type: ignore[arg-type]
    assert created_at(DAY1 + 0.5) == "2026-03-01T12:00:00.500000"
    same = _created_at(SimpleNamespace(name="sqlite"), lambda v: v.strftime("%Y-%m-%d %H:%M:%S.%f"))  # type: ignore[arg-type]
    assert same(DAY1 + 1.9999996) == "2026-03-01 12:00:02.000000"


async def test_sqlite_binds_none_at_the_first_adapter_lookup(tmp_path: Path) -> None:
    """A SQLite registry registers sqlite3's adapter for ``None`` (a NULL bound without the adapter
    protocol's failed lookups, ~40 % of a ledger row's insert), and NULL is still what gets stored."""
    reg = await open_registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    try:
        adapter = sqlite3.adapters.get((type(None), sqlite3.PrepareProtocol))
        assert adapter is not None and adapter(None) is None
        await reg.usage.insert_many([rec(1, key_id=None, version=None, ttft=None, error_type=None)])
        async with reg.usage._db.read("the stored row") as conn:
            nulls = (
                await conn.exec_driver_sql(
                    "SELECT key_id IS NULL, version IS NULL, ttft IS NULL, error_type IS NULL FROM usage"
                )
            ).one()
        assert tuple(nulls) == (1, 1, 1, 1)
    finally:
        await reg.close()
    plain = sqlite3.connect(":memory:")  # and so for every user of the module
    try:
        assert plain.execute("SELECT ? IS NULL, typeof(?)", (None, None)).fetchone() == (1, "null")
    finally:
        plain.close()


async def test_sqlite_builds_a_batch_in_its_own_thread_and_gives_the_cpu_up_as_it_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the rows are built in the driver's thread as it inserts them, not on the event loop, and
    that thread yields the CPU every ``_ROWS_PER_YIELD`` rows: on a one-core gateway a whole batch ran in
    one time slice while requests waited."""
    yielded: list[int] = []
    monkeypatch.setattr(usage_repository, "_yield_cpu", lambda: yielded.append(threading.get_ident()))
    reg = await open_registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    try:
        rows = workload()[:250]
        assert await reg.usage.insert_many(rows) == 250
        assert len(yielded) == 250 // usage_repository._ROWS_PER_YIELD
        assert threading.get_ident() not in yielded  # not the loop's thread
        stored = await reg.usage.query(since=datetime.fromtimestamp(DAY1 - 1, UTC))
        assert stored == [replace(r, input=None, output=None) for r in rows]
    finally:
        await reg.close()


@pytest.mark.parametrize("size", [1, 9, 10, 23])
async def test_every_batch_size_is_stored_whole_and_in_order(registry: Registry, size: int) -> None:
    """SQLite takes a batch ten rows a statement, and the rest one a statement: batches of one, under ten,
    exactly ten and ten-and-more come back whole and in order (each row's own values, nothing shifted
    between rows of one statement)."""
    rows = workload()[230 : 230 + size]  # rows of both days, with and without a key, error and usage
    assert await registry.usage.insert_many(rows) == size
    stored = await registry.usage.query(since=datetime.fromtimestamp(DAY1 - 1, UTC))
    assert stored == [replace(r, input=None, output=None) for r in rows]


@pytest.mark.parametrize("bad_at", [3, 12], ids=["in a ten-row statement", "in the rest"])
async def test_a_batch_the_database_refuses_is_a_registry_error_and_leaves_nothing(
    registry: Registry, bad_at: int
) -> None:
    """A row the table refuses (no request id) fails the whole batch as a ``RegistryError``, writes none of
    it (not the ten-row statement that went in before the refused row's either), and the next batch goes
    in."""
    good = workload()[:13]
    batch = [*good[:bad_at], replace(good[0], request_id=None), *good[bad_at:]]  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="recording usage failed"):
        await registry.usage.insert_many(batch)
    since = datetime.fromtimestamp(DAY1 - 1, UTC)
    assert await registry.usage.query(since=since) == []
    assert await registry.usage.insert_many(good) == 13
    assert [r.request_id for r in await registry.usage.query(since=since)] == [r.request_id for r in good]
