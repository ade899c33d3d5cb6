"""The registry's own async engine (``registry/engine.py``) on SQLite and Postgres: transactions commit or
roll back as their block ends, a cancelled statement gives its connection back to the pool and leaves the
engine usable, and the cleanup that gives a connection back runs to its end even when its task is
cancelled meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, Table, create_engine, func, insert, select
from sqlalchemy.exc import InvalidRequestError

from superollama.registry.db import _create_schema, _parse, _postgres_engine, _sqlite_engine
from superollama.registry.engine import AsyncEngine, _to_completion

_meta = MetaData()
_numbers = Table("engine_numbers", _meta, Column("n", Integer, primary_key=True))

# A statement that runs long enough to be cancelled in its middle.
_SLOW = {
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
    "SELECT max(x) FROM c",
    "postgresql": "SELECT pg_sleep(5)",
}


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """The engine ``open_registry`` makes, on an empty database."""
    url, schema = _parse(db_url, None)
    engine = _sqlite_engine(url, 1) if schema is None else _postgres_engine(url, schema, 1)
    if schema is not None:
        await _create_schema(engine, schema)
    async with engine.begin() as conn:
        await conn.run_sync(_meta.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(_numbers)))


async def test_a_transaction_commits_when_its_block_ends(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(_numbers), [{"n": 1}, {"n": 2}])
        assert list(await conn.scalars(select(_numbers.c.n).order_by(_numbers.c.n))) == [1, 2]
    assert await _count(engine) == 2


async def test_a_transaction_rolls_back_when_its_block_raises(engine: AsyncEngine) -> None:
    with pytest.raises(LookupError, match="stop"):
        async with engine.begin() as conn:
            await conn.execute(insert(_numbers).values(n=1))
            raise LookupError("stop")
    assert await _count(engine) == 0
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_the_block_owns_its_transaction(engine: AsyncEngine) -> None:
    """As with ``with conn.begin():``: a statement after a commit inside the block is refused."""
    with pytest.raises(InvalidRequestError, match="inside context manager"):
        async with engine.begin() as conn:
            await conn.execute(insert(_numbers).values(n=1))
            await conn.run_sync(Connection.commit)
            await conn.execute(insert(_numbers).values(n=2))
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_run_sync_passes_the_connection_and_arguments(engine: AsyncEngine) -> None:
    def add(conn: Connection, first: int, *, then: int) -> int:
        conn.execute(insert(_numbers), [{"n": first}, {"n": then}])
        return int(conn.scalar(select(func.max(_numbers.c.n))))

    async with engine.begin() as conn:
        assert await conn.run_sync(add, 3, then=7) == 7
    assert await _count(engine) == 2


async def test_execution_options_reach_every_connection(engine: AsyncEngine) -> None:
    tagged = engine.execution_options(superollama_test="yes")
    async with tagged.connect() as conn:
        assert conn.sync_connection.get_execution_options()["superollama_test"] == "yes"
    async with engine.connect() as conn:
        assert "superollama_test" not in conn.sync_connection.get_execution_options()
    assert tagged.sync_engine.pool is engine.sync_engine.pool  # one pool, not a second


async def test_a_cancelled_statement_gives_its_connection_back(engine: AsyncEngine) -> None:
    async def slow() -> None:
        async with engine.begin() as conn:
            await conn.execute(insert(_numbers).values(n=1))
            await conn.exec_driver_sql(_SLOW[engine.dialect.name])

    for _ in range(3):  # more than the pool holds: none may leak
        task = asyncio.create_task(slow())
        await asyncio.sleep(0.2)
        assert not task.done(), "the slow statement ended before it could be cancelled"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await _count(engine) == 0  # none of the cancelled transactions landed
    async with engine.begin() as conn:
        await conn.execute(insert(_numbers).values(n=9))
    assert await _count(engine) == 1


def test_a_synchronous_driver_is_refused() -> None:
    with pytest.raises(ValueError, match="not an asyncio driver"):
        AsyncEngine(create_engine("sqlite://"))


async def test_cleanup_runs_to_its_end_when_its_caller_is_cancelled() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    steps: list[str] = []

    async def cleanup() -> str:
        started.set()
        await release.wait()
        steps.append("cleaned")
        return "done"

    caller = asyncio.create_task(_to_completion(cleanup()))
    await started.wait()
    caller.cancel()
    await asyncio.sleep(0)
    caller.cancel()  # twice: every cancellation waits for the cleanup
    await asyncio.sleep(0)
    assert not caller.done() and steps == []
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller  # the cancellation comes after the cleanup, not instead of it
    assert steps == ["cleaned"]


async def test_cleanup_without_cancellation_returns_its_value() -> None:
    async def cleanup() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await _to_completion(cleanup()) == "done"
