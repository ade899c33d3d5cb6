"""Registries for tests: a SQLite file, or a fresh Postgres schema that is dropped afterwards.

Every registry test runs on both (the ``db_url`` fixture in ``tests/conftest.py``). An unreachable
Postgres fails the test, it does not skip: CI starts the server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ["drop_schema", "postgres_schema", "postgres_schema_sync", "require_postgres", "schema_url"]


async def require_postgres(pg_url: str) -> None:
    engine = create_async_engine(pg_url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        pytest.fail(f"PostgreSQL at {pg_url} is not reachable ({exc!r}); start it, CI does")
    finally:
        await engine.dispose()


async def drop_schema(pg_url: str, schema: str) -> None:
    engine = create_async_engine(pg_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


def schema_url(pg_url: str, schema: str) -> str:
    """The registry URL of ``schema`` in the test database (the registry creates the schema)."""
    return f"{pg_url}?schema={schema}"


@asynccontextmanager
async def postgres_schema(pg_url: str, prefix: str = "test") -> AsyncIterator[str]:
    """A fresh schema name (``<prefix>_<random>``), checked reachable first, dropped on exit."""
    await require_postgres(pg_url)
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        await drop_schema(pg_url, schema)


@contextmanager
def postgres_schema_sync(pg_url: str, prefix: str = "test") -> Iterator[str]:
    """``postgres_schema`` for synchronous fixtures (a server process the test starts)."""
    asyncio.run(require_postgres(pg_url))
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        asyncio.run(drop_schema(pg_url, schema))
