"""Open a registry database: SQLite (the single-machine default) or Postgres (shared by many replicas)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import URL, event, inspect, make_url, text
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import AsyncAdaptedQueuePool

from superollama.errors import RegistryError
from superollama.registry._base import READ_ONLY, Clock, Database, feed_channel_sql, utcnow
from superollama.registry._batches import BatchRepository
from superollama.registry._cluster import ClusterRepository
from superollama.registry._connections import ConnectionRepository
from superollama.registry._deployments import DeploymentRepository, VersionScaleRepository
from superollama.registry._errors import mapped
from superollama.registry._finetune import FineTuneRepository
from superollama.registry._jobs import JobRepository
from superollama.registry._join_tokens import JoinTokenRepository
from superollama.registry._keys import KeyRepository
from superollama.registry._rag import RagRepository
from superollama.registry._responses import ResponseRepository
from superollama.registry._rollouts import RolloutRepository, ShadowRepository, WindowRepository
from superollama.registry._usage import UsageRepository
from superollama.registry._watch import SqliteWatch
from superollama.registry._webhooks import WebhookRepository
from superollama.registry.engine import AsyncEngine, create_engine
from superollama.registry.migrations import MIGRATIONS, Migration, Sealer, migrate
from superollama.registry.repos import EventRepository, InstanceRepository, NodeRepository, VersionRepository
from superollama.registry.schema import generations

if TYPE_CHECKING:
    import asyncpg

__all__ = ["Registry", "open_registry"]

SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SCHEMA_LOCK_CLASS: Final = 0x534F5343  # "SOSC": first key of the advisory lock around CREATE SCHEMA


class Registry:
    """The registry: one engine, its repositories. Close it when done (or use ``async with``)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock = utcnow,
        session_url: str | None = None,
        schema: str | None = None,
        generations: bool = True,
    ) -> None:
        db = Database(engine, clock=clock, generations=generations)
        self.engine = engine
        self._session_url = session_url
        self._schema = schema
        self._watch: SqliteWatch | None = None
        database = engine.url.database or ""
        # a plain path only (a file: URI may name a shared in-memory database)
        if self.dialect == "sqlite" and generations and database not in ("", ":memory:"):
            self._watch = None if database.startswith("file:") else SqliteWatch(database)
        self.cluster = ClusterRepository(db)
        self.versions = VersionRepository(db)
        self.nodes = NodeRepository(db)
        self.join_tokens = JoinTokenRepository(db)  # what ``agent --join`` shows
        self.instances = InstanceRepository(db)
        self.events = EventRepository(db)
        self.connections = ConnectionRepository(db)
        self.jobs = JobRepository(db)
        self.keys = KeyRepository(db)
        self.usage = UsageRepository(db)
        self.deployments = DeploymentRepository(db)
        self.version_scales = VersionScaleRepository(db)  # ``scale VERSION --replicas N …``
        self.responses = ResponseRepository(db)
        self.webhooks = WebhookRepository(db)
        self.rag = RagRepository(db)  # files, vector stores, grounding
        self.batches = BatchRepository(db)  # OpenAI batches and their requests
        self.fine_tuning = FineTuneRepository(db)  # jobs, events, checkpoints
        self.rollouts = RolloutRepository(db)
        self.windows = WindowRepository(db)
        self.shadows = ShadowRepository(db)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    async def session(self) -> tuple[asyncpg.Connection, str] | None:
        """A dedicated Postgres connection outside the pool (for ``LISTEN`` and the leader lock, which
        live as long as their session) and the change feed's channel name; None on SQLite."""
        if self._session_url is None:
            return None
        import asyncpg

        settings = {"application_name": "superollama-control"}
        if self._schema is not None:  # named after the schema: an operator (or a test) can tell them apart
            settings["application_name"] = f"superollama-control {self._schema}"[:63]
            settings["search_path"] = _quote(self._schema)
        with mapped("opening a control session"):
            conn = await asyncpg.connect(self._session_url, server_settings=settings, timeout=10)
            try:
                channel = str(await conn.fetchval(f"SELECT {feed_channel_sql()}"))
            except BaseException:
                conn.terminate()
                raise
        return conn, channel

    @property
    def watch(self) -> SqliteWatch | None:
        """A file-backed SQLite registry's cheap change check (``registry/_watch.py``); None elsewhere."""
        return self._watch

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        await self.engine.dispose()

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def open_registry(
    url: str,
    *,
    schema: str | None = None,
    migrations: Sequence[Migration] = MIGRATIONS,
    clock: Clock = utcnow,
    pool_size: int = 5,
    seal: Sealer | None = None,
) -> Registry:
    """Connect, bring the schema up to date, and return the registry.

    ``url``: ``sqlite[+aiosqlite]:///path`` (parent directory created; WAL, foreign keys, busy timeout) or
    ``postgres[ql][+asyncpg]://…``. On Postgres, ``schema`` (or ``?schema=NAME`` in the URL) puts every
    table in that schema, created if missing. ``migrations`` is injectable for tests of upgrades.
    ``seal`` encrypts a secret a migration moves out of a plain column (the node's ``SecretBox``).
    """
    parsed, schema = _parse(url, schema)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed, pool_size)
    else:
        engine = _postgres_engine(parsed, schema, pool_size)
    try:
        if schema is not None:
            await _create_schema(engine, schema)
        await migrate(engine, migrations, seal=seal)
        async with engine.connect() as conn:
            feed = await conn.run_sync(lambda c: inspect(c).has_table(generations.name))
    except BaseException:
        await engine.dispose()
        raise
    session_url = None
    if parsed.get_backend_name() != "sqlite":
        session_url = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    return Registry(engine, clock=clock, session_url=session_url, schema=schema, generations=feed)


def _parse(url: str, schema: str | None) -> tuple[URL, str | None]:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise RegistryError(f"invalid registry URL: {exc}") from exc
    query_schema = parsed.query.get("schema")
    if query_schema is not None:
        parsed = parsed.difference_update_query(["schema"])
        if isinstance(query_schema, tuple):
            raise RegistryError("registry URL: give ?schema= once")
        schema = schema or query_schema
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        if driver not in ("", "pysqlite", "aiosqlite"):
            raise RegistryError(f"registry URL: unsupported SQLite driver {driver!r} (use aiosqlite)")
        if schema is not None:
            raise RegistryError("registry URL: a schema is only supported on PostgreSQL")
        return parsed.set(drivername="sqlite+aiosqlite"), None
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg"):
            raise RegistryError(f"registry URL: unsupported PostgreSQL driver {driver!r} (use asyncpg)")
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise RegistryError(f"registry URL: invalid schema name {schema!r}")
        return parsed.set(drivername="postgresql+asyncpg"), schema
    raise RegistryError(f"registry URL: unsupported database {backend!r} (use sqlite or postgresql)")


class _RollbackOnClose(sqlite3.Connection):
    """A SQLite connection that rolls back an open transaction when it is closed.

    A task cancelled in the middle of a statement (a client gone, a shutdown) makes SQLAlchemy drop the
    connection: aiosqlite closes it in its thread once the statement is done. Python's ``close`` leaves
    the statement of a cursor still referenced (by the cancelled task's traceback, say) unfinalized, and
    SQLite then keeps the connection as a "zombie" that holds its transaction, and with it the write
    lock, until that cursor is collected: every other writer waited its busy timeout and failed with
    "database is locked". Rolling back first ends the transaction there and then (pending statements
    are aborted)."""

    def close(self) -> None:
        if self.in_transaction:
            # closing anyway: if this fails, SQLite rolls back when the connection is finally freed
            with contextlib.suppress(sqlite3.Error):
                self.rollback()
        super().close()


def _sqlite_engine(url: URL, pool_size: int) -> AsyncEngine:
    database = url.database or ""
    memory = database in ("", ":memory:")
    if not memory and not database.startswith("file:"):
        path = Path(database).expanduser()
        with mapped("creating the registry's directory"):
            path.parent.mkdir(parents=True, exist_ok=True)
        url = url.set(database=str(path))
    # A plain :memory: database lives in one connection: keep exactly one, handed out in turn.
    pool: dict[str, Any] = (
        {"pool_size": 1, "max_overflow": 0, "pool_recycle": -1}
        if memory
        else {"pool_size": pool_size, "max_overflow": pool_size}
    )
    _bind_none_directly()
    engine = create_engine(
        url, poolclass=AsyncAdaptedQueuePool, connect_args={"factory": _RollbackOnClose}, **pool
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if not memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writes take the write lock up front, so a read-then-write never fails to upgrade its lock.
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


_NONE_ADAPTER: Any = {}.get  # None for any argument, in C (see _bind_none_directly)


def _bind_none_directly() -> None:
    """Bind ``None`` (SQL NULL) without the sqlite3 module's failed adaptation lookup.

    sqlite3 binds ``int``, ``float``, ``str`` and ``bytes`` at once; any other value, ``None`` included,
    first goes through its adapter protocol: a registry miss, then the lookups of ``__adapt__`` and
    ``__conform__``. That is ~1 µs a ``None``: the usage ledger's row (a row a request, half its 22
    columns NULL in the common case) cost 40 % more to insert than the same row with no NULL. An adapter
    registered for ``NoneType`` is found at the first lookup; ``{}.get`` (a C function: ``None`` for any
    argument) hands ``None`` back, which is then bound as NULL, as before. Process-wide, like every sqlite3
    adapter, and the same value for every user of the module."""
    sqlite3.register_adapter(type(None), _NONE_ADAPTER)


def _postgres_engine(url: URL, schema: str | None, pool_size: int) -> AsyncEngine:
    settings = {"application_name": "superollama"}
    if schema is not None:
        settings["search_path"] = _quote(schema)
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"server_settings": settings, "timeout": 10},
    )


def _quote(schema: str) -> str:
    return '"' + schema.replace('"', '""') + '"'


async def _create_schema(engine: AsyncEngine, schema: str) -> None:
    with mapped(f"creating schema {schema!r}"):
        async with engine.begin() as conn:
            # CREATE SCHEMA IF NOT EXISTS can still collide when two processes run it at once.
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:cls, hashtext(:name))"),
                {"cls": _SCHEMA_LOCK_CLASS, "name": schema},
            )
            await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}"))
