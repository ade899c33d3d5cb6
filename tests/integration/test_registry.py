"""The registry against real databases: a SQLite file and the PostgreSQL server CI starts.

Each Postgres test runs in a fresh random schema, dropped afterwards. An unreachable server fails the
test (it does not skip): CI is expected to start it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from sqlalchemy import Connection, func, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError
from tests.databases import postgres_schema

from superollama.core import (
    EventRecord,
    InstanceRecord,
    InstanceState,
    ModelRef,
    NodeRecord,
    VersionRecord,
)
from superollama.core.deployments import DeploymentRecord
from superollama.core.routing import DeploymentTarget
from superollama.errors import (
    InvalidModelName,
    ModelExists,
    ModelNotFound,
    NotFound,
    RegistryError,
)
from superollama.registry import (
    MIGRATIONS,
    Migration,
    Registry,
    current_version,
    migrate,
    open_registry,
)
from superollama.registry import schema as tables

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def version(name: str, **changes: Any) -> VersionRecord:
    ref = ModelRef.parse(name)
    record = VersionRecord(
        name=str(ref),
        model=ref.family,
        tag=ref.tag,
        format="gguf",
        digest="sha256:" + "ab" * 32,
        size=98_765_432_109,  # > 2**32: BigInteger
        source=f"hf://example/{ref.model}",
    )
    return replace(record, **changes)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def registry(db_url: str, clock: Clock) -> AsyncIterator[Registry]:
    reg = await open_registry(db_url, clock=clock)
    try:
        yield reg
    finally:
        await reg.close()


async def _model_rows(reg: Registry) -> list[str]:
    async with reg.engine.connect() as conn:
        return list((await conn.scalars(select(tables.models.c.name).order_by(tables.models.c.name))).all())


# --- versions -------------------------------------------------------------------------------------------


async def test_add_get_find_and_duplicate(registry: Registry, clock: Clock) -> None:
    added = await registry.versions.add(version("smollm2:135m-q4_1", runtime="llamacpp"))
    assert added.created_at == added.updated_at == T0
    got = await registry.versions.get("smollm2:135m-q4_1")
    assert got == added
    assert got.size == 98_765_432_109
    assert got.runtime == "llamacpp"
    assert got.enabled is True
    assert await registry.versions.find("smollm2:135m-q4_1") == added
    assert await registry.versions.find("smollm2:nope") is None
    with pytest.raises(ModelExists):
        await registry.versions.add(version("smollm2:135m-q4_1", digest="sha256:other"))
    assert (await registry.versions.get("smollm2:135m-q4_1")).digest == added.digest
    with pytest.raises(ModelNotFound) as info:
        await registry.versions.get("smollm2:nope")
    assert info.value.status == 404
    assert await _model_rows(registry) == ["smollm2"]


async def test_list_filters_and_order(registry: Registry) -> None:
    await registry.versions.add(version("qwen:0.5b", format="safetensors"))
    await registry.versions.add(version("smollm2:360m", enabled=False))
    await registry.versions.add(version("smollm2:135m"))
    await registry.versions.add(version("hf.co/org/repo:q4_k_m"))
    names = [v.name for v in await registry.versions.list()]
    assert names == ["hf.co/org/repo:q4_k_m", "qwen:0.5b", "smollm2:135m", "smollm2:360m"]
    assert [v.name for v in await registry.versions.list(model="smollm2")] == ["smollm2:135m", "smollm2:360m"]
    assert [v.name for v in await registry.versions.list(enabled=False)] == ["smollm2:360m"]
    assert [v.name for v in await registry.versions.list(enabled=True, model="smollm2")] == ["smollm2:135m"]
    assert [v.name for v in await registry.versions.list(format="safetensors")] == ["qwen:0.5b"]
    assert await registry.versions.list(format="onnx") == []
    assert await _model_rows(registry) == ["hf.co/org/repo", "qwen", "smollm2"]


async def test_enable_disable(registry: Registry, clock: Clock) -> None:
    await registry.versions.add(version("smollm2:135m"))
    later = clock.tick(5)
    disabled = await registry.versions.set_enabled("smollm2:135m", False)
    assert disabled.enabled is False
    assert disabled.updated_at == later
    assert disabled.created_at == T0
    assert (await registry.versions.get("smollm2:135m")).enabled is False
    assert await registry.versions.list(enabled=True) == []
    assert (await registry.versions.set_enabled("smollm2:135m", True)).enabled is True
    assert [v.name for v in await registry.versions.list(enabled=True)] == ["smollm2:135m"]
    with pytest.raises(ModelNotFound):
        await registry.versions.set_enabled("ghost:latest", True)


async def test_rename_within_and_across_models(registry: Registry, clock: Clock) -> None:
    await registry.versions.add(version("smollm2:135m", metadata={"a": 1}))
    await registry.versions.add(version("smollm2:360m"))
    clock.tick()
    renamed = await registry.versions.rename("smollm2:135m", "smollm2:small")
    assert (renamed.name, renamed.model, renamed.tag) == ("smollm2:small", "smollm2", "small")
    assert renamed.metadata == {"a": 1}
    assert renamed.updated_at == T0 + timedelta(seconds=1)
    assert await registry.versions.find("smollm2:135m") is None
    assert (await registry.versions.get("smollm2:small")).digest == renamed.digest

    moved = await registry.versions.rename("smollm2:small", "tiny:v1")
    assert (moved.model, moved.tag) == ("tiny", "v1")
    assert await _model_rows(registry) == ["smollm2", "tiny"]  # smollm2 keeps 360m
    await registry.versions.rename("smollm2:360m", "tiny:v2")
    assert await _model_rows(registry) == ["tiny"]  # smollm2 went with its last version
    assert [v.name for v in await registry.versions.list(model="tiny")] == ["tiny:v1", "tiny:v2"]


async def test_rename_errors(registry: Registry) -> None:
    await registry.versions.add(version("smollm2:135m"))
    await registry.versions.add(version("smollm2:360m"))
    with pytest.raises(ModelExists):
        await registry.versions.rename("smollm2:135m", "smollm2:360m")
    with pytest.raises(ModelNotFound):
        await registry.versions.rename("ghost:latest", "smollm2:x")
    with pytest.raises(InvalidModelName):
        await registry.versions.rename("smollm2:135m", "SmolLM2")  # not canonical: smollm2:latest
    with pytest.raises(InvalidModelName):
        await registry.versions.rename("smollm2:135m", "bad name!")
    assert [v.name for v in await registry.versions.list()] == ["smollm2:135m", "smollm2:360m"]
    assert await _model_rows(registry) == ["smollm2"]  # no stray model row from the failed renames
    same = await registry.versions.rename("smollm2:135m", "smollm2:135m")
    assert same.name == "smollm2:135m"


async def test_delete_removes_model_row_with_last_version(registry: Registry) -> None:
    await registry.versions.add(version("smollm2:135m"))
    await registry.versions.add(version("smollm2:360m"))
    await registry.versions.add(version("qwen:0.5b"))
    await registry.versions.delete("smollm2:135m")
    assert await _model_rows(registry) == ["qwen", "smollm2"]
    await registry.versions.delete("smollm2:360m")
    assert await _model_rows(registry) == ["qwen"]
    assert [v.name for v in await registry.versions.list()] == ["qwen:0.5b"]
    with pytest.raises(ModelNotFound):
        await registry.versions.delete("smollm2:360m")
    await registry.versions.add(version("smollm2:360m"))  # the family can come back
    assert await _model_rows(registry) == ["qwen", "smollm2"]


async def test_metadata_round_trip_and_update(registry: Registry, clock: Clock) -> None:
    meta = {
        "general": {"architecture": "llama", "name": "SmolLM2 — 135M «instruct» 日本語 🦙"},
        "context_length": 8192,
        "ratio": 0.25,
        "flags": [True, False, None],
        "nested": {"a": {"b": {"c": [1, {"d": "é"}]}}},
    }
    await registry.versions.add(version("smollm2:135m", metadata=MappingProxyType(meta)))
    got = await registry.versions.get("smollm2:135m")
    assert got.metadata == meta
    clock.tick()
    updated = await registry.versions.update_metadata(
        "smollm2:135m", {"context_length": 4096, "new": {"x": "ü"}}
    )
    assert updated.metadata == {**meta, "context_length": 4096, "new": {"x": "ü"}}
    assert updated.updated_at == T0 + timedelta(seconds=1)
    assert (await registry.versions.get("smollm2:135m")).metadata == updated.metadata
    with pytest.raises(ModelNotFound):
        await registry.versions.update_metadata("ghost:latest", {"a": 1})


async def test_datetimes_are_aware_utc(registry: Registry, clock: Clock) -> None:
    plus_two = timezone(timedelta(hours=2))
    clock.now = datetime(2026, 6, 1, 14, 0, 0, 123456, tzinfo=plus_two)
    added = await registry.versions.add(version("smollm2:135m"))
    got = await registry.versions.get("smollm2:135m")
    for value in (added.created_at, got.created_at, got.updated_at):
        assert value is not None
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)
        assert value == datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    given = datetime(2020, 2, 29, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5)))
    event = await registry.events.add(EventRecord(action="pull", target="x", created_at=given))
    assert event.created_at == given
    assert event.created_at is not None and event.created_at.tzinfo == UTC
    with pytest.raises(RegistryError):  # a naive datetime is a bug, refused at the boundary
        await registry.events.add(EventRecord(action="pull", target="x", created_at=datetime(2020, 1, 1)))


# --- nodes ----------------------------------------------------------------------------------------------


async def test_nodes(registry: Registry, clock: Clock) -> None:
    inventory = {"cpu": {"cores": 16}, "gpus": [{"name": "NVIDIA H100", "memory": 80 * 2**30}]}
    node = await registry.nodes.upsert(
        NodeRecord(name="b-node", address="http://10.0.0.2:7070", inventory=inventory)
    )
    assert node.last_seen == T0
    assert node.inventory == inventory
    await registry.nodes.upsert(NodeRecord(name="a-node", address="http://10.0.0.1:7070"))
    assert [n.name for n in await registry.nodes.list()] == ["a-node", "b-node"]

    clock.tick(3)
    changed = await registry.nodes.upsert(
        NodeRecord(name="b-node", address="http://10.0.0.9:7070", state="draining", inventory={"cpu": {}})
    )
    assert (changed.address, changed.state, changed.inventory) == (
        "http://10.0.0.9:7070",
        "draining",
        {"cpu": {}},
    )
    assert await registry.nodes.get("b-node") == changed

    # a node's report leaves its state alone (an admin's cordon set meanwhile stays)
    reported = await registry.nodes.report("b-node", "http://10.0.0.3:7070", {"cpu": {"cores": 8}})
    assert reported is not None
    assert (reported.address, reported.state, reported.inventory) == (
        "http://10.0.0.3:7070",
        "draining",
        {"cpu": {"cores": 8}},
    )
    assert reported.last_seen == clock() and await registry.nodes.get("b-node") == reported
    assert await registry.nodes.report("zzz", "x", {}) is None
    assert await registry.nodes.find("zzz") is None

    seen = clock.tick(10)
    beat = await registry.nodes.heartbeat("a-node")
    assert beat.last_seen == seen
    assert (await registry.nodes.get("a-node")).last_seen == seen
    assert await registry.nodes.find("zzz") is None
    with pytest.raises(NotFound):
        await registry.nodes.get("zzz")
    with pytest.raises(NotFound):
        await registry.nodes.heartbeat("zzz")
    await registry.nodes.delete("a-node")
    assert [n.name for n in await registry.nodes.list()] == ["b-node"]
    with pytest.raises(NotFound):
        await registry.nodes.delete("a-node")


# --- instances ------------------------------------------------------------------------------------------


def instance(id: str, **changes: Any) -> InstanceRecord:
    record = InstanceRecord(
        id=id, version="smollm2:135m", node="n1", runtime="llamacpp", state=InstanceState.PENDING
    )
    return replace(record, **changes)


async def test_instances_upsert_get_delete(registry: Registry, clock: Clock) -> None:
    created = await registry.instances.upsert(instance("i1", device="cuda:0"))
    assert created.started_at == created.updated_at == T0
    assert created.state is InstanceState.PENDING
    assert await registry.instances.get("i1") == created
    later = clock.tick(7)
    updated = await registry.instances.upsert(
        instance("i1", state=InstanceState.READY, pid=42, endpoint="http://x")
    )
    assert updated.started_at == T0  # kept
    assert updated.updated_at == later
    assert (updated.state, updated.pid, updated.endpoint, updated.device) == (
        InstanceState.READY,
        42,
        "http://x",
        "cpu",
    )
    restarted = await registry.instances.upsert(instance("i1", started_at=later))
    assert restarted.started_at == later
    await registry.instances.delete("i1")
    assert await registry.instances.find("i1") is None
    with pytest.raises(NotFound):
        await registry.instances.get("i1")
    with pytest.raises(NotFound):
        await registry.instances.delete("i1")


async def test_instances_list_by_node_version_and_state(registry: Registry) -> None:
    await registry.instances.upsert(instance("i1", node="n1", state=InstanceState.READY))
    await registry.instances.upsert(instance("i2", node="n1", state=InstanceState.FAILED))
    await registry.instances.upsert(instance("i3", node="n2", state=InstanceState.READY, version="qwen:0.5b"))
    await registry.instances.upsert(instance("i4", node="n2", state=InstanceState.LOADING))

    def ids(records: list[InstanceRecord]) -> list[str]:
        return [r.id for r in records]

    assert ids(await registry.instances.list()) == ["i1", "i2", "i3", "i4"]
    assert ids(await registry.instances.list(node="n2")) == ["i3", "i4"]
    assert ids(await registry.instances.list(version="qwen:0.5b")) == ["i3"]
    assert ids(await registry.instances.list(states=[InstanceState.READY])) == ["i1", "i3"]
    live = {InstanceState.READY, InstanceState.LOADING, InstanceState.PENDING}
    assert ids(await registry.instances.list(states=live)) == ["i1", "i3", "i4"]
    assert ids(await registry.instances.list(node="n1", states=(s for s in live))) == ["i1"]
    assert ids(await registry.instances.list(states=[])) == []
    assert all(isinstance(r.state, InstanceState) for r in await registry.instances.list())


async def test_instance_set_state(registry: Registry, clock: Clock) -> None:
    await registry.instances.upsert(instance("i1"))
    clock.tick()
    ready = await registry.instances.set_state(
        "i1", InstanceState.READY, pid=1234, endpoint="http://127.0.0.1:9"
    )
    assert (ready.state, ready.pid, ready.endpoint, ready.error) == (
        InstanceState.READY,
        1234,
        "http://127.0.0.1:9",
        None,
    )
    assert ready.updated_at == T0 + timedelta(seconds=1)
    failed = await registry.instances.set_state("i1", InstanceState.FAILED, error="exit code 137")
    assert (failed.pid, failed.endpoint, failed.error) == (1234, "http://127.0.0.1:9", "exit code 137")
    again = await registry.instances.set_state("i1", InstanceState.PENDING)
    assert again.error is None  # the error goes with the state it explained
    assert await registry.instances.get("i1") == again
    assert [r.id for r in await registry.instances.list(states=[InstanceState.PENDING])] == ["i1"]
    with pytest.raises(NotFound):
        await registry.instances.set_state("ghost", InstanceState.READY)


# --- events ---------------------------------------------------------------------------------------------


async def test_events_newest_first_with_filters(registry: Registry, clock: Clock) -> None:
    first = await registry.events.add(
        EventRecord(action="pull", target="smollm2:135m", detail={"bytes": 1, "note": "ünïcødé"})
    )
    assert first.id is not None and first.created_at == T0
    assert first.detail == {"bytes": 1, "note": "ünïcødé"}
    clock.tick()
    await registry.events.add(EventRecord(action="enable", target="smollm2:135m", actor="admin"))
    same_time = await registry.events.add(EventRecord(action="pull", target="qwen:0.5b", result="error"))
    clock.tick()
    last = await registry.events.add(EventRecord(action="delete", target="qwen:0.5b"))

    listed = await registry.events.list()
    assert [e.action for e in listed] == ["delete", "pull", "enable", "pull"]  # ties: newest id first
    assert listed[0] == last
    assert listed[1] == same_time
    assert listed[-1] == first
    assert [e.action for e in await registry.events.list(limit=2)] == ["delete", "pull"]
    assert [e.action for e in await registry.events.list(target="smollm2:135m")] == ["enable", "pull"]
    assert [e.target for e in await registry.events.list(action="pull")] == ["qwen:0.5b", "smollm2:135m"]
    since = T0 + timedelta(seconds=1)
    assert [e.action for e in await registry.events.list(since=since)] == ["delete", "pull", "enable"]
    assert [e.action for e in await registry.events.list(since=since, action="pull", target="qwen:0.5b")] == [
        "pull"
    ]
    assert await registry.events.list(limit=0) == []
    got = (await registry.events.list(action="enable"))[0]
    assert (got.actor, got.result, got.detail) == ("admin", "ok", {})


async def test_concurrent_event_adds_all_land(registry: Registry) -> None:
    added = await asyncio.gather(
        *(registry.events.add(EventRecord(action="tick", target=f"t{i}", detail={"i": i})) for i in range(20))
    )
    assert len({e.id for e in added}) == 20
    listed = await registry.events.list(action="tick", limit=100)
    assert sorted(e.detail["i"] for e in listed) == list(range(20))


# A write whose statement takes a while: SQLite counts through a recursive CTE, Postgres sleeps.
_SLOW_WRITE = {
    "sqlite": "UPDATE generations SET value = value + (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
    "SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c) WHERE name = 'all' RETURNING value",
    "postgresql": "UPDATE generations SET value = value + (SELECT 1 FROM pg_sleep(0.5)) WHERE name = 'all' "
    "RETURNING value",
}


async def test_a_write_cancelled_mid_statement_releases_its_lock(
    db_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task cancelled while its write's statement runs (a client gone, a shutdown) must not keep the
    write lock: SQLite's driver drops such a connection, and closing it with the statement's cursor still
    referenced (here: by the cancelled task's traceback) left a connection that held its transaction until
    that cursor was collected; the next writer waited its busy timeout and failed "database is locked"."""
    monkeypatch.setattr("superollama.registry.db.SQLITE_BUSY_TIMEOUT_MS", 1_000)
    async with await open_registry(db_url, clock=clock) as reg:
        before = await _all_generation(reg)

        async def slow_write() -> None:
            async with reg.engine.begin() as conn:
                (await conn.exec_driver_sql(_SLOW_WRITE[reg.dialect])).first()

        for delay in (0.0, 0.02, 0.1):
            task = asyncio.create_task(slow_write())
            await asyncio.sleep(delay)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task  # ``task`` stays referenced, and with it the cursor the statement ran on
            await reg.events.add(EventRecord(action="after-cancel", target=str(delay)))
        assert [e.target for e in await reg.events.list(action="after-cancel")] == ["0.1", "0.02", "0.0"]
        assert await _all_generation(reg) == before  # none of the cancelled writes landed


async def _all_generation(reg: Registry) -> int:
    stmt = select(tables.generations.c.value).where(tables.generations.c.name == "all")
    async with reg.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


# --- migrations, opening, errors ------------------------------------------------------------------------


async def test_migrations_are_idempotent(db_url: str) -> None:
    first = await open_registry(db_url)
    try:
        assert await current_version(first.engine) == len(MIGRATIONS)
        await first.versions.add(version("smollm2:135m"))
        assert await migrate(first.engine) == []  # nothing pending
    finally:
        await first.close()
    second = await open_registry(db_url)
    try:
        assert await current_version(second.engine) == len(MIGRATIONS)
        assert (await second.versions.get("smollm2:135m")).name == "smollm2:135m"
        async with second.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT version, name FROM schema_migrations"))).all()
        assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
    finally:
        await second.close()


def _add_notes_column(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE versions ADD COLUMN notes VARCHAR"))
    conn.execute(text("CREATE TABLE labels (name VARCHAR PRIMARY KEY)"))


async def test_upgrade_in_place_keeps_data(db_url: str) -> None:
    old = await open_registry(db_url, migrations=MIGRATIONS[:1])
    try:
        assert await current_version(old.engine) == 1
        await old.versions.add(version("smollm2:135m", metadata={"k": "v"}))
        await old.events.add(EventRecord(action="pull", target="smollm2:135m"))
    finally:
        await old.close()

    upgraded = (*MIGRATIONS[:1], Migration(2, "add versions.notes and labels", _add_notes_column))
    new = await open_registry(db_url, migrations=upgraded)
    try:
        assert await current_version(new.engine) == 2
        kept = await new.versions.get("smollm2:135m")
        assert kept.metadata == {"k": "v"}
        assert [e.target for e in await new.events.list()] == ["smollm2:135m"]
        async with new.engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("versions")}
            )
            assert "notes" in columns
            assert await conn.scalar(select(func.count()).select_from(text("labels"))) == 0
        await new.versions.add(version("smollm2:360m"))  # the repositories still work on the new schema
    finally:
        await new.close()
    again = await open_registry(db_url, migrations=upgraded)  # idempotent after the upgrade too
    await again.close()


async def test_a_failing_migration_changes_nothing(db_url: str) -> None:
    def broken(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE half_done (x INTEGER)"))
        conn.execute(text("SELECT * FROM no_such_table"))

    async with await open_registry(db_url) as reg:
        await reg.versions.add(version("smollm2:135m"))
    with pytest.raises(RegistryError):
        await open_registry(db_url, migrations=(*MIGRATIONS, Migration(2, "broken", broken)))
    async with await open_registry(db_url) as reg:
        assert await current_version(reg.engine) == len(MIGRATIONS)
        assert "half_done" not in await _table_names(reg)
        assert (await reg.versions.get("smollm2:135m")).name == "smollm2:135m"


async def test_migrations_must_be_numbered_in_order(db_url: str) -> None:
    with pytest.raises(RegistryError):
        await open_registry(db_url, migrations=(Migration(2, "skips one", _add_notes_column),))


async def _table_names(reg: Registry) -> set[str]:
    async with reg.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_migrated_schema_matches_schema_module(registry: Registry) -> None:
    def describe(conn: Connection) -> dict[str, Any]:
        insp = inspect(conn)
        return {
            name: (
                {(c["name"], bool(c["nullable"])) for c in insp.get_columns(name)},
                {i["name"] for i in insp.get_indexes(name)},
            )
            for name in tables.metadata.tables
        }

    async with registry.engine.connect() as conn:
        actual = await conn.run_sync(describe)
    expected = {
        name: (
            {(c.name, bool(c.nullable)) for c in table.columns},
            {i.name for i in table.indexes},
        )
        for name, table in tables.metadata.tables.items()
    }
    assert actual == expected
    assert await _table_names(registry) == {*tables.metadata.tables, "schema_migrations"}


async def test_concurrent_opens_both_succeed(db_url: str) -> None:
    opened = await asyncio.gather(*(open_registry(db_url) for _ in range(4)))
    try:
        assert all([await current_version(r.engine) == len(MIGRATIONS) for r in opened])
        await opened[0].versions.add(version("smollm2:135m"))
        assert (await opened[-1].versions.get("smollm2:135m")).name == "smollm2:135m"
    finally:
        await asyncio.gather(*(r.close() for r in opened))


async def test_processes_opening_a_new_sqlite_registry_together_all_succeed(tmp_path: Path) -> None:
    """What ``serve --workers N`` does on first start: several processes create and migrate one new
    SQLite file at the same moment. Each must open it (none refused with "database is locked")."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    code = (
        "import asyncio, sys\n"
        "from superollama.registry import open_registry\n"
        "async def main():\n"
        "    reg = await open_registry(sys.argv[1])\n"
        "    await reg.close()\n"
        "asyncio.run(main())\n"
    )
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", code, url, stderr=asyncio.subprocess.PIPE)
        for _ in range(6)
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    failures = [err.decode()[-500:] for p, (_, err) in zip(procs, results, strict=True) if p.returncode]
    assert not failures, failures
    reg = await open_registry(url)
    try:
        assert await current_version(reg.engine) == len(MIGRATIONS)
    finally:
        await reg.close()


async def test_database_failures_become_registry_errors(registry: Registry) -> None:
    async with registry.engine.begin() as conn:
        await conn.execute(text("DROP TABLE events"))
    with pytest.raises(RegistryError) as info:
        await registry.events.add(EventRecord(action="x", target="y"))
    assert isinstance(info.value.__cause__, SQLAlchemyError)
    assert "recording an event" in info.value.message
    assert "INSERT" not in info.value.message  # the SQL text stays out of the message
    with pytest.raises(RegistryError):
        await registry.events.list()


async def test_sqlite_url_forms_pragmas_and_parent_dir(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "registry.db"
    reg = await open_registry(f"sqlite:///{path}")
    try:
        assert path.is_file()
        assert reg.dialect == "sqlite"
        async with reg.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 10_000
        await reg.versions.add(version("smollm2:135m"))
    finally:
        await reg.close()
    async with await open_registry(f"sqlite+aiosqlite:///{path}") as again:
        assert (await again.versions.get("smollm2:135m")).tag == "135m"


async def test_sqlite_in_memory() -> None:
    async with await open_registry("sqlite://") as reg:
        await asyncio.gather(*(reg.events.add(EventRecord(action="a", target=str(i))) for i in range(5)))
        assert len(await reg.events.list()) == 5


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root@localhost/db",
        "sqlite+pysqlcipher:///x.db",
        "postgresql+psycopg2://postgres@127.0.0.1/test",
        "not a url",
    ],
)
async def test_unsupported_urls(url: str) -> None:
    with pytest.raises(RegistryError):
        await open_registry(url)


async def test_schema_is_postgres_only(tmp_path: Path) -> None:
    with pytest.raises(RegistryError):
        await open_registry(f"sqlite:///{tmp_path / 'r.db'}?schema=abc")
    with pytest.raises(RegistryError):
        await open_registry(f"sqlite:///{tmp_path / 'r.db'}", schema="abc")


@pytest.mark.postgres
async def test_postgres_url_forms_and_schema_keyword(pg_url: str) -> None:
    async with postgres_schema(pg_url, "test_registry") as schema:
        plain_url = pg_url.replace("postgresql+asyncpg://", "postgres://")
        async with await open_registry(plain_url, schema=schema) as reg:
            assert reg.dialect == "postgresql"
            await reg.versions.add(version("smollm2:135m"))
            async with reg.engine.connect() as conn:
                assert await conn.scalar(text("SELECT current_schema()")) == schema
        other = pg_url.replace("postgresql+asyncpg://", "postgresql://")
        async with await open_registry(f"{other}?schema={schema}") as reg:
            assert [v.name for v in await reg.versions.list()] == ["smollm2:135m"]
        with pytest.raises(RegistryError):
            await open_registry(pg_url, schema="bad;name")


@pytest.mark.postgres
async def test_unreachable_postgres_is_a_registry_error() -> None:
    with pytest.raises(RegistryError):
        await open_registry("postgresql://postgres@127.0.0.1:1/test")


# --- connections ----------------------------------------------------------------------------------------


async def test_connections_round_trip(registry: Registry) -> None:
    from superollama.core import ConnectionRecord
    from superollama.errors import Conflict, NotFound

    added = await registry.connections.add(
        ConnectionRecord(
            name="lab",
            kind="openai",
            url="http://127.0.0.1:9/v1",
            secret="env:LAB_KEY",
            options={"refresh": 30, "aliases": {"big": "llama-3-70b"}},
            url_secret="enc:sealed-elsewhere",
        )
    )
    assert added.created_at is not None and added.enabled and added.url_secret == "enc:sealed-elsewhere"
    assert await registry.connections.get("lab") == added
    with pytest.raises(Conflict):
        await registry.connections.add(ConnectionRecord(name="lab", kind="ollama", url="http://x"))
    await registry.connections.add(ConnectionRecord(name="a-first", kind="tgi", url="http://y"))
    assert [c.name for c in await registry.connections.list()] == ["a-first", "lab"]
    disabled = await registry.connections.set_enabled("lab", False)
    assert disabled.enabled is False and disabled.options["aliases"] == {"big": "llama-3-70b"}
    await registry.connections.delete("lab")
    assert await registry.connections.find("lab") is None
    with pytest.raises(NotFound):
        await registry.connections.delete("lab")
    with pytest.raises(NotFound):
        await registry.connections.set_enabled("lab", True)


async def _old_connection_row(db_url: str, name: str, url: str) -> None:
    """A connection as a registry before migration 7 stored it: the URL as given, secrets and all."""
    old = await open_registry(db_url, migrations=MIGRATIONS[:6])
    try:
        async with old.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO connections (name, kind, url, secret, enabled, options, created_at, "
                    "updated_at) VALUES (:name, 'openai', :url, NULL, :on, '{}', :t, :t)"
                ),
                {"name": name, "url": url, "on": True, "t": T0},
            )
    finally:
        await old.close()


async def test_migration_7_moves_url_secrets_out_encrypted(db_url: str, tmp_path: Path) -> None:
    import json

    from superollama.control import SecretBox
    from superollama.core import UrlSecrets

    await _old_connection_row(db_url, "cred", "http://bob:TOPSECRETPW@127.0.0.1:9/v1?api-key=K3Y&v=2")
    await _old_connection_row(db_url, "plain", "http://127.0.0.1:9/v1")
    box = SecretBox(tmp_path / "secret.key")
    async with await open_registry(db_url, seal=box.encrypt) as reg:
        assert await current_version(reg.engine) == len(MIGRATIONS)  # 7 and every later one
        cred, plain = await reg.connections.get("cred"), await reg.connections.get("plain")
        async with reg.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT url, url_secret FROM connections"))).all()
    assert cred.url == "http://127.0.0.1:9/v1?v=2"
    assert cred.url_secret is not None and cred.url_secret.startswith("enc:")
    assert "TOPSECRETPW" not in repr(rows) and "K3Y" not in repr(rows)
    opened = box.open(cred.url_secret)
    assert opened is not None
    assert UrlSecrets.from_json(json.loads(opened)) == UrlSecrets("bob:TOPSECRETPW", ("api-key=K3Y",))
    assert (plain.url, plain.url_secret) == ("http://127.0.0.1:9/v1", None)


async def test_migration_7_without_the_secret_key_changes_nothing(db_url: str) -> None:
    await _old_connection_row(db_url, "cred", "http://bob:TOPSECRETPW@127.0.0.1:9/v1")
    with pytest.raises(RegistryError, match="connection 'cred' has a secret in its URL"):
        await open_registry(db_url)
    async with await open_registry(db_url, migrations=MIGRATIONS[:6]) as reg:
        assert await current_version(reg.engine) == 6
        async with reg.engine.connect() as conn:
            assert await conn.scalar(text("SELECT url FROM connections")) == (
                "http://bob:TOPSECRETPW@127.0.0.1:9/v1"
            )


# --- deployments ----------------------------------------------------------------------------------------


async def test_deployments_put_history_rollback_pause_delete(registry: Registry, clock: Clock) -> None:
    a, b = DeploymentTarget("smollm2:135m", 100), DeploymentTarget("gemma3:270m", 100)
    first = await registry.deployments.put(DeploymentRecord("chat", targets=(a,)))
    assert first.created_at == first.updated_at == T0 and first.enabled and first.client_name == "chat"
    staging = await registry.deployments.put(DeploymentRecord("chat", "staging", (b,), sticky="user"))
    assert staging.client_name == "chat@staging" and staging.sticky == "user"
    assert [(d.name, d.stage) for d in await registry.deployments.list()] == [
        ("chat", "production"),
        ("chat", "staging"),
    ]
    # the same set again changes nothing and keeps no history
    assert await registry.deployments.put(DeploymentRecord("chat", targets=(a,))) == first
    assert await registry.deployments.history("chat") == []
    clock.tick()
    split = (replace(a, weight=90), replace(b, weight=10))
    changed = await registry.deployments.put(DeploymentRecord("chat", targets=split, sticky="key"))
    assert changed.targets == split and changed.sticky == "key" and changed.created_at == T0
    history = await registry.deployments.history("chat")
    assert [h.targets for h in history] == [(a,)] and history[0].sticky == "none"
    paused = await registry.deployments.set_enabled("chat", "production", False)
    assert not paused.enabled
    rolled = await registry.deployments.rollback("chat")
    assert rolled.targets == (a,) and rolled.sticky == "none" and not rolled.enabled
    assert await registry.deployments.history("chat") == []
    with pytest.raises(NotFound, match="no earlier target set"):
        await registry.deployments.rollback("chat")
    with pytest.raises(NotFound, match="'nope@staging' not found"):
        await registry.deployments.rollback("nope", "staging")
    await registry.deployments.delete("chat", "staging")
    assert await registry.deployments.find("chat", "staging") is None
    with pytest.raises(NotFound):
        await registry.deployments.delete("chat", "staging")
    with pytest.raises(NotFound):
        await registry.deployments.set_enabled("chat", "staging", True)


async def test_stored_responses_belong_to_their_key(registry: Registry) -> None:
    response = {"id": "resp_1", "model": "m", "output": [{"type": "message", "content": []}]}
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    await registry.responses.add(response, conversation, key_id="k1")
    await registry.responses.add({**response, "id": "resp_2"}, [], key_id=None)
    found = await registry.responses.find("resp_1", key_id="k1")
    assert found is not None and found.response == response and found.conversation == conversation
    assert found.model == "m" and found.created_at.tzinfo is not None
    assert await registry.responses.find("resp_1", key_id="k2") is None  # another key's: not there
    assert await registry.responses.find("resp_1", key_id=None) is None
    assert await registry.responses.find("resp_2", key_id=None) is not None
    assert not await registry.responses.delete("resp_1", key_id="k2")
    assert await registry.responses.delete("resp_1", key_id="k1")
    assert await registry.responses.find("resp_1", key_id="k1") is None
    assert not await registry.responses.delete("resp_1", key_id="k1")
    assert await registry.responses.delete("resp_2", key_id=None)
