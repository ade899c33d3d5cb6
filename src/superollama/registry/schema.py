"""The registry's tables as they are now (after the last migration), in one ``MetaData``.

Repositories query these tables. The migrations in ``migrations.py`` are what create and change them in a
database; a test checks that a freshly migrated database has exactly the columns and indexes declared here.
When a table changes, add a migration *and* change it here, in the same commit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "NAMING_CONVENTION",
    "Json",
    "UTCDateTime",
    "api_keys",
    "events",
    "instances",
    "metadata",
    "models",
    "nodes",
    "usage",
    "versions",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    Postgres stores ``timestamptz``; SQLite keeps text without an offset, so values are converted to UTC
    before they are written and marked UTC when they are read. A naive datetime is a bug: it is refused.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: the registry stores aware UTC times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def Json() -> Any:
    """JSON text on SQLite, JSONB on Postgres."""
    return JSON().with_variant(JSONB(), "postgresql")


def _event_id() -> Any:
    """64-bit ids on Postgres; SQLite autoincrements only an ``INTEGER PRIMARY KEY``."""
    return BigInteger().with_variant(Integer(), "sqlite")


metadata = MetaData(naming_convention=NAMING_CONVENTION)

models = Table(
    "models",
    metadata,
    Column("name", String, primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
)

versions = Table(
    "versions",
    metadata,
    Column("name", String, primary_key=True),  # canonical "family:tag"
    Column("model", String, ForeignKey("models.name"), nullable=False, index=True),
    Column("tag", String, nullable=False),
    Column("format", String, nullable=False),
    Column("digest", String, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("source", String, nullable=False),
    Column("metadata", Json(), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("runtime", String, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

nodes = Table(
    "nodes",
    metadata,
    Column("name", String, primary_key=True),
    Column("address", String, nullable=False),
    Column("state", String, nullable=False),
    Column("inventory", Json(), nullable=False),
    Column("last_seen", UTCDateTime, nullable=True),
)

instances = Table(
    "instances",
    metadata,
    Column("id", String, primary_key=True),
    Column("version", String, nullable=False, index=True),
    Column("node", String, nullable=False),
    Column("runtime", String, nullable=False),
    Column("device", String, nullable=False),
    Column("state", String, nullable=False),
    Column("pid", Integer, nullable=True),
    Column("endpoint", String, nullable=True),
    Column("error", Text, nullable=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_instances_node_state", "node", "state"),
)

events = Table(
    "events",
    metadata,
    Column("id", _event_id(), primary_key=True, autoincrement=True),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("actor", String, nullable=False),
    Column("action", String, nullable=False),
    Column("target", String, nullable=False, index=True),
    Column("result", String, nullable=False),
    Column("detail", Json(), nullable=False),
)

connections = Table(
    "connections",
    metadata,
    Column("name", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("url", String, nullable=False),
    Column("secret", Text, nullable=True),
    Column("enabled", Boolean, nullable=False),
    Column("options", Json(), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("url_secret", Text, nullable=True),  # migration 7: what split_url took out of the URL, sealed
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("target", String, nullable=False, index=True),
    Column("state", String, nullable=False, index=True),
    Column("actor", String, nullable=False),
    Column("params", Json(), nullable=False),
    Column("progress", Json(), nullable=False),
    Column("result", Json(), nullable=False),
    Column("error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("prefix", String, nullable=False, index=True),  # visible part, e.g. so-ab12cd34
    Column("hash", String, nullable=False),  # sha256 hex of the whole key
    Column("role", String, nullable=False),  # admin | user
    Column("models", Json(), nullable=False),  # fnmatch patterns; [] = every model
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("model_limits", Json(), nullable=False),  # {pattern: {"rpm": n, "tpm": n}}
    Column("budget_usd", Float, nullable=True),
    Column("budget_period", String, nullable=False),  # day | week | month | total
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    Index("ix_api_keys_hash", "hash", unique=True),
)

usage = Table(
    "usage",
    metadata,
    Column("id", _event_id(), primary_key=True, autoincrement=True),
    Column("created_at", UTCDateTime, nullable=False, index=True),  # when the request started
    Column("request_id", String, nullable=False),
    Column("key_id", String, nullable=True, index=True),
    Column("key_prefix", String, nullable=True),
    Column("protocol", String, nullable=False),  # openai | ollama | anthropic
    Column("operation", String, nullable=False),  # chat | completion | embeddings | generate …
    Column("model", String, nullable=False, index=True),  # what the client asked for
    Column("version", String, nullable=True),
    Column("instance", String, nullable=True),
    Column("connection", String, nullable=True),
    Column("node", String, nullable=True),
    Column("status", Integer, nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("usage_estimated", Boolean, nullable=True),  # tokens estimated: the backend reported none
    Column("ttft", Float, nullable=True),  # seconds
    Column("load_wait", Float, nullable=True),  # seconds
    Column("latency", Float, nullable=False),  # seconds, end to end
    Column("cost", Float, nullable=True),  # USD
    Column("error_type", String, nullable=True),
)
