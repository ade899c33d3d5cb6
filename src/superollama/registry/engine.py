"""The registry's async engine: SQLAlchemy Core's ``Engine`` on an asyncio driver (aiosqlite, asyncpg),
driven from the event loop through greenlets.

Why not ``sqlalchemy.ext.asyncio``: importing any part of it runs its package ``__init__``, which imports
its ``AsyncSession`` and with it the whole ORM, about 6 MB of every server process's memory that nothing
here uses (the registry is Core only: tables, statements, results). What the registry needs of it is
small and is here: an engine that hands out connections and transactions, and a connection that runs a
statement, a driver string or a synchronous function (migrations, reflection).

How it works: SQLAlchemy's asyncio dialects give the synchronous ``Connection`` a driver whose calls
suspend the greenlet they run in until the driver's coroutine is done. ``greenlet_spawn`` runs a
synchronous call in a greenlet of its own and awaits each such coroutine on the event loop, so the call
is an ``await`` to us and a plain call to SQLAlchemy. Its results are buffered by the driver adapter:
reading them does no I/O and needs no ``await``.

Cancellation: a task cancelled inside a statement gets ``CancelledError`` at its ``await``; SQLAlchemy
sees it raised by the driver and invalidates that connection (it is not known to be idle any more).
Giving the connection back to the pool is run to completion even then, so the pool never holds a
connection a cancelled task was still closing, and the engine is never disposed under it. A transaction
is committed when its block ends normally and rolled back when it raises, as ``Connection.begin`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Concatenate, ParamSpec, TypeVar, TypeVarTuple, overload

from sqlalchemy import URL, Connection, CursorResult, Dialect, Engine, Executable, ScalarResult
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.sql.selectable import TypedReturnsRows
from sqlalchemy.util import greenlet_spawn

__all__ = ["AsyncConnection", "AsyncEngine", "create_engine"]

_T = TypeVar("_T")
_P = ParamSpec("_P")
_Ts = TypeVarTuple("_Ts")
Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


def create_engine(url: URL, **options: Any) -> AsyncEngine:
    """``sqlalchemy.create_engine`` for a URL of an asyncio driver, as an ``AsyncEngine``."""
    return AsyncEngine(create_sync_engine(url, **options))


class AsyncEngine:
    """A Core ``Engine`` whose connections are used with ``await``."""

    __slots__ = ("sync_engine",)

    def __init__(self, sync_engine: Engine) -> None:
        if not sync_engine.dialect.is_async:
            raise ValueError(f"{sync_engine.url.drivername!r} is not an asyncio driver")
        self.sync_engine = sync_engine

    @property
    def dialect(self) -> Dialect:
        return self.sync_engine.dialect

    @property
    def url(self) -> URL:
        return self.sync_engine.url

    def execution_options(self, **options: Any) -> AsyncEngine:
        """The same pool and dialect, with these options on every connection it hands out."""
        return AsyncEngine(self.sync_engine.execution_options(**options))

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection from the pool, given back when the block ends (whatever ends it)."""
        sync = await greenlet_spawn(self.sync_engine.connect)
        try:
            yield AsyncConnection(sync)
        finally:
            await _to_completion(greenlet_spawn(sync.close))

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction: committed when the block ends, rolled back if it raises."""
        async with self.connect() as conn:
            # entered as ``with conn.begin():`` is: SQLAlchemy then refuses a commit inside the block
            transaction = (await greenlet_spawn(conn.sync_connection.begin)).__enter__()
            try:
                yield conn
            except BaseException as exc:
                await greenlet_spawn(transaction.__exit__, type(exc), exc, exc.__traceback__)
                raise
            await greenlet_spawn(transaction.__exit__, None, None, None)

    async def dispose(self) -> None:
        """Close every pooled connection (those checked out are closed when they come back)."""
        await greenlet_spawn(self.sync_engine.dispose)


class AsyncConnection:
    """A Core ``Connection`` whose calls are awaited; results come back whole (buffered)."""

    __slots__ = ("sync_connection",)

    def __init__(self, sync_connection: Connection) -> None:
        self.sync_connection = sync_connection

    @overload
    async def execute(
        self,
        statement: TypedReturnsRows[*_Ts],
        parameters: Parameters = None,
        *,
        execution_options: Mapping[str, Any] | None = None,
    ) -> CursorResult[*_Ts]: ...

    @overload
    async def execute(
        self,
        statement: Executable,
        parameters: Parameters = None,
        *,
        execution_options: Mapping[str, Any] | None = None,
    ) -> CursorResult[*tuple[Any, ...]]: ...

    async def execute(
        self,
        statement: Executable,
        parameters: Parameters = None,
        *,
        execution_options: Mapping[str, Any] | None = None,
    ) -> CursorResult[*tuple[Any, ...]]:
        return await greenlet_spawn(
            self.sync_connection.execute, statement, parameters, execution_options=execution_options
        )

    async def scalar(self, statement: Executable, parameters: Parameters = None) -> Any:
        """The first column of the first row, or None."""
        return (await self.execute(statement, parameters)).scalar()

    async def scalars(self, statement: Executable, parameters: Parameters = None) -> ScalarResult[Any]:
        """The first column of every row."""
        return (await self.execute(statement, parameters)).scalars()

    async def exec_driver_sql(self, statement: str, parameters: Any = None) -> CursorResult[*tuple[Any, ...]]:
        """A string handed to the driver as it is (its own parameter style)."""
        return await greenlet_spawn(self.sync_connection.exec_driver_sql, statement, parameters)

    async def driver_connection(self) -> Any:
        """The driver's own connection under this one (aiosqlite's, asyncpg's), for a call SQLAlchemy has
        no way to make: its transaction is this connection's."""
        return await greenlet_spawn(lambda: self.sync_connection.connection.driver_connection)

    async def run_sync(
        self, fn: Callable[Concatenate[Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """``fn(sync_connection, *args, **kwargs)``: synchronous SQLAlchemy code (a migration, an
        ``inspect``) whose statements run on this connection."""
        return await greenlet_spawn(partial(fn, self.sync_connection, *args, **kwargs))


async def _to_completion(cleanup: Awaitable[_T]) -> _T:
    """Await ``cleanup`` in a task of its own until it is done, even when the caller is cancelled
    meanwhile; the cancellation is raised after it. Returning early would leave it running unseen: a
    connection given back to a pool after the pool was disposed, say."""
    task = asyncio.ensure_future(cleanup)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled
    return task.result()
