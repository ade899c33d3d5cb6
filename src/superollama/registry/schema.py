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
from sqlalchemy.types import TypeEngine

__all__ = [
    "NAMING_CONVENTION",
    "Json",
    "UTCDateTime",
    "api_keys",
    "batch_requests",
    "batches",
    "deployment_history",
    "deployments",
    "events",
    "files",
    "gateways",
    "generations",
    "groundings",
    "instances",
    "join_tokens",
    "metadata",
    "models",
    "nodes",
    "rollouts",
    "shadow_samples",
    "stored_responses",
    "target_windows",
    "usage",
    "vector_store_file_batches",
    "vector_store_files",
    "vector_stores",
    "version_placements",
    "versions",
    "webhook_cursor",
    "webhook_deliveries",
    "webhooks",
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


class Json(TypeDecorator[Any]):
    """JSON text on SQLite, JSONB on Postgres.

    The type is picked when a statement is compiled for a dialect (not with ``with_variant(JSONB())``
    at import), so that a SQLite registry never imports SQLAlchemy's Postgres dialect: ``serve`` at
    idle does not carry it."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


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
    Column("owner", String, nullable=True),  # migration 8: the gateway running it (None: before 8)
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

join_tokens = Table(
    "join_tokens",
    metadata,
    Column("id", String, primary_key=True),  # jt_…
    Column("name", String, nullable=False),
    Column("prefix", String, nullable=False),  # visible part, e.g. soj-ab12cd34
    Column("hash", String, nullable=False),  # sha256 hex of the whole token
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),  # the last join (or rejoin) it let in
    Column("last_node", String, nullable=True),  # the node that join named
    Index("ix_join_tokens_hash", "hash", unique=True),
    Index("ix_join_tokens_name", "name", unique=True),
)

usage = Table(
    "usage",
    metadata,
    Column("id", _event_id(), primary_key=True, autoincrement=True),
    Column("created_at", UTCDateTime, nullable=False, index=True),  # when the request started
    Column("request_id", String, nullable=False),
    # no index but on created_at: rows are read by time, and each index is paid by every request's row
    Column("key_id", String, nullable=True),
    Column("key_prefix", String, nullable=True),
    Column("protocol", String, nullable=False),  # openai | ollama | anthropic
    Column("operation", String, nullable=False),  # chat | completion | embeddings | generate …
    Column("model", String, nullable=False),  # what the client asked for
    Column("version", String, nullable=True),
    Column("instance", String, nullable=True),
    Column("connection", String, nullable=True),
    Column("node", String, nullable=True),
    Column("status", Integer, nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("usage_estimated", Boolean, nullable=True),  # tokens estimated: the backend reported none
    Column("search_units", Integer, nullable=True),  # rerank: a query over up to 100 documents
    Column("ttft", Float, nullable=True),  # seconds
    Column("load_wait", Float, nullable=True),  # seconds
    Column("latency", Float, nullable=False),  # seconds, end to end
    Column("cost", Float, nullable=True),  # USD
    Column("error_type", String, nullable=True),
)

deployments = Table(
    "deployments",
    metadata,
    Column("name", String, primary_key=True),  # the base name clients send ("chat")
    Column("stage", String, primary_key=True),  # production | staging | … ("chat@staging")
    Column("targets", Json(), nullable=False),  # [{"name", "weight", "role", "replicas"}]
    Column("sticky", String, nullable=False),  # none | user | header | key
    Column("enabled", Boolean, nullable=False),  # false: paused (answers as disabled)
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

deployment_history = Table(
    "deployment_history",
    metadata,
    Column("id", _event_id(), primary_key=True, autoincrement=True),
    Column("name", String, nullable=False),
    Column("stage", String, nullable=False),
    Column("targets", Json(), nullable=False),  # the target set before a change
    Column("sticky", String, nullable=False),
    Column("replaced_at", UTCDateTime, nullable=False),
    Index("ix_deployment_history_name_stage", "name", "stage"),
)

# Migration 18: a version scaled by itself (``scale VERSION --replicas N``), with where it may run.
version_placements = Table(
    "version_placements",
    metadata,
    Column("version", String, primary_key=True),
    Column("replicas", Integer, nullable=False),
    Column("placement", Json(), nullable=False),  # {device, node, labels, spread}
    Column("updated_at", UTCDateTime, nullable=False),
)

# Migration 9: the change feed between gateways (control/feed.py) and the gateways alive.
generations = Table(
    "generations",
    metadata,
    Column("name", String, primary_key=True),  # "all" and each of registry._base.CHANGE_KINDS
    Column("value", BigInteger, nullable=False),  # bumped in the transaction of every change
)

gateways = Table(
    "gateways",
    metadata,
    Column("id", String, primary_key=True),  # host-pid or SUPEROLLAMA_GATEWAY_NAME
    Column("host", String, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("url", String, nullable=True),
    Column("session", Integer, nullable=True),  # Postgres backend pid of its leader-lock connection
    Column("generation", BigInteger, nullable=False),  # the "all" generation it has applied
    Column("leader", Boolean, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),  # its last heartbeat
)

stored_responses = Table(
    "stored_responses",
    metadata,
    Column("id", String, primary_key=True),  # resp_…
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("key_id", String, nullable=True, index=True),  # the key that created it: only it may read it
    Column("model", String, nullable=False),
    Column("response", Json(), nullable=False),  # the response object as it was returned
    Column("conversation", Json(), nullable=False),  # chat messages a later response continues from
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String, primary_key=True),  # wh_…
    Column("url", String, nullable=False),
    Column("events", Json(), nullable=False),  # action patterns (fnmatch): ["deployment.*", "model.pull"]
    Column("secret", Text, nullable=False),  # the signing secret, sealed (enc:…)
    Column("description", String, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("webhook_id", String, nullable=False, index=True),
    Column("event_id", BigInteger, nullable=True),  # None for a ping
    Column("action", String, nullable=False),
    Column("payload", Json(), nullable=False),  # the body sent, the same on every attempt
    Column("state", String, nullable=False),  # pending, delivered, failed
    Column("attempts", Integer, nullable=False),
    Column("next_at", UTCDateTime, nullable=False, index=True),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_ms", Float, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("uq_webhook_deliveries_webhook_id_event_id", "webhook_id", "event_id", unique=True),
)

webhook_cursor = Table(
    "webhook_cursor",
    metadata,
    Column("name", String, primary_key=True),  # "events"
    Column("event_id", BigInteger, nullable=False),  # the highest event id turned into deliveries
)
files = Table(
    "files",
    metadata,
    Column("id", String, primary_key=True),  # file-…
    Column("key_id", String, nullable=True, index=True),  # the key that uploaded it: only it sees it
    Column("filename", String, nullable=False),
    Column("purpose", String, nullable=False, index=True),
    Column("bytes", BigInteger, nullable=False),
    Column("digest", String, nullable=False, index=True),  # its blob in the home's files/blobs
    Column("status", String, nullable=False),  # uploaded | processed | error
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("expires_at", UTCDateTime, nullable=True),
)

vector_stores = Table(
    "vector_stores",
    metadata,
    Column("id", String, primary_key=True),  # vs_…
    Column("key_id", String, nullable=True, index=True),
    Column("name", String, nullable=True),
    Column("description", Text, nullable=True),
    Column("metadata", Json(), nullable=False),
    Column("embedding_model", String, nullable=False),  # a routable model or deployment name
    Column("engine", String, nullable=False),  # sqlite-vec | lancedb
    Column("expires_after", Json(), nullable=True),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("last_active_at", UTCDateTime, nullable=False),
)

vector_store_files = Table(
    "vector_store_files",
    metadata,
    Column("vector_store_id", String, primary_key=True),
    Column("file_id", String, primary_key=True),
    Column("batch_id", String, nullable=True, index=True),
    Column("status", String, nullable=False),  # in_progress | completed | failed | cancelled
    Column("last_error", Json(), nullable=True),  # {code, message}
    Column("attributes", Json(), nullable=False),
    Column("chunking", Json(), nullable=False),  # the static strategy it was chunked with
    Column("usage_bytes", BigInteger, nullable=False),
    Column("chunks", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

vector_store_file_batches = Table(
    "vector_store_file_batches",
    metadata,
    Column("id", String, primary_key=True),  # vsfb_…
    Column("vector_store_id", String, nullable=False, index=True),
    Column("cancelled", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

groundings = Table(
    "groundings",
    metadata,
    Column("name", String, primary_key=True),  # a model or deployment name, as clients send it
    Column("vector_store_ids", Json(), nullable=False),
    Column("top_k", Integer, nullable=False),
    Column("score_threshold", Float, nullable=True),
    Column("template", Text, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Migration 14: canary rollouts, per-target window stats of every gateway process, shadow comparisons.
rollouts = Table(
    "rollouts",
    metadata,
    Column("name", String, primary_key=True),  # the deployment's base name
    Column("stage", String, primary_key=True),
    Column("state", String, nullable=False),  # running | promoted | rolled_back | aborted
    Column("stable", String, nullable=False),  # the target traffic comes from
    Column("target", String, nullable=False),  # the canary
    Column("weight", Integer, nullable=False),  # the canary's weight now (%)
    Column("policy", Json(), nullable=False),  # core.canary.CanaryPolicy
    Column("decisions", Json(), nullable=False),  # [{"at", "action", "weight", "reason", "canary", "stable"}]
    Column("next_at", UTCDateTime, nullable=False),  # when the leader judges next
    Column("started_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

target_windows = Table(
    "target_windows",
    metadata,
    Column("reporter", String, primary_key=True),  # one gateway process (host-pid)
    Column("deployment", String, primary_key=True),  # client name: "chat", "chat@staging"
    Column("target", String, primary_key=True),  # version or connection model
    Column("count", Integer, nullable=False),  # requests in its window
    Column("errors", Integer, nullable=False),
    Column("buckets", Json(), nullable=False),  # latency histogram (core.canary.BUCKET_BOUNDS)
    Column("dropped", Integer, nullable=False),  # shadow copies dropped (queue full), since it started
    Column("reported_at", UTCDateTime, nullable=False),
)

shadow_samples = Table(
    "shadow_samples",
    metadata,
    Column("id", _event_id(), primary_key=True, autoincrement=True),
    Column("deployment", String, nullable=False),
    Column("target", String, nullable=False),  # the shadow target
    Column("primary_target", String, nullable=False),  # the target that answered the client
    Column("at", UTCDateTime, nullable=False),
    Column("primary_latency", Float, nullable=False),  # seconds
    Column("shadow_latency", Float, nullable=True),  # seconds; None when the shadow failed
    Column("primary_length", Integer, nullable=False),  # characters of output
    Column("shadow_length", Integer, nullable=True),
    Column("exact", Boolean, nullable=False),
    Column("similarity", Float, nullable=True),  # cosine of embeddings, when an embedding model is set
    Column("error", String, nullable=True),
    Index("ix_shadow_samples_deployment", "deployment", "id"),
)

# Migration 15: OpenAI batches and their requests (each one's outcome, written as it finishes).
batches = Table(
    "batches",
    metadata,
    Column("id", String, primary_key=True),  # batch_…
    Column("key_id", String, nullable=True, index=True),  # the key that created it: runs and pays as it
    Column("key_prefix", String, nullable=True),  # that key's prefix when it did (a rotated key stops it)
    Column("endpoint", String, nullable=False),  # /v1/chat/completions | /v1/embeddings | …
    Column("input_file_id", String, nullable=False),
    Column("completion_window", String, nullable=False),  # 24h
    Column("status", String, nullable=False, index=True),  # validating | in_progress | finalizing | …
    Column("metadata", Json(), nullable=False),
    Column("errors", Json(), nullable=True),  # [{code, message, param, line}] when validation failed
    Column("output_file_id", String, nullable=True),
    Column("error_file_id", String, nullable=True),
    Column("total", Integer, nullable=False),
    Column("completed", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),  # summed from the answers' usage
    Column("output_tokens", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("in_progress_at", UTCDateTime, nullable=True),
    Column("finalizing_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    Column("failed_at", UTCDateTime, nullable=True),
    Column("expired_at", UTCDateTime, nullable=True),
    Column("cancelling_at", UTCDateTime, nullable=True),
    Column("cancelled_at", UTCDateTime, nullable=True),
)

batch_requests = Table(
    "batch_requests",
    metadata,
    Column("batch_id", String, primary_key=True),
    Column("line", Integer, primary_key=True, autoincrement=False),  # 1-based line of the input file
    Column("custom_id", String, nullable=False),
    Column("body", Json(), nullable=False),  # the request's JSON body
    Column("state", String, nullable=False),  # pending | completed | failed | cancelled | expired
    Column("status_code", Integer, nullable=True),
    Column("request_id", String, nullable=True),
    Column("response", Json(), nullable=True),  # the answer's JSON body
    Column("error", Json(), nullable=True),  # {code, message} when there is no answer
    Column("finished_at", UTCDateTime, nullable=True),
    Index("ix_batch_requests_batch_id_state", "batch_id", "state"),
)

# Migration 16: LoRA fine-tuning jobs, their events and checkpoints.
fine_tuning_jobs = Table(
    "fine_tuning_jobs",
    metadata,
    Column("id", String, primary_key=True),  # ftjob-…
    Column("key_id", String, nullable=True, index=True),  # the key that created it: only it sees it
    Column("model", String, nullable=False),  # the base version
    Column("training_file", String, nullable=False),
    Column("validation_file", String, nullable=True),
    Column("suffix", String, nullable=True),
    Column("seed", Integer, nullable=False),
    Column("hyperparameters", Json(), nullable=False),  # resolved: n_epochs, batch_size, … rank, alpha
    Column("status", String, nullable=False, index=True),  # validating_files … succeeded|failed|cancelled
    Column("fine_tuned_model", String, nullable=True),  # the version it made
    Column("trained_tokens", BigInteger, nullable=True),
    Column("error", Json(), nullable=True),  # {code, message, param}
    Column("metadata", Json(), nullable=False),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("finished_at", UTCDateTime, nullable=True),
)

fine_tuning_events = Table(
    "fine_tuning_events",
    metadata,
    Column("id", _event_id(), primary_key=True, autoincrement=True),
    Column("job_id", String, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("level", String, nullable=False),  # info | warn | error
    Column("type", String, nullable=False),  # message | metrics
    Column("message", Text, nullable=False),
    Column("data", Json(), nullable=True),  # metrics: step, train_loss …
    Index("ix_fine_tuning_events_job", "job_id", "id"),
)

fine_tuning_checkpoints = Table(
    "fine_tuning_checkpoints",
    metadata,
    Column("job_id", String, primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("id", String, nullable=False),  # ftckpt-…
    Column("metrics", Json(), nullable=False),
    Column("path", String, nullable=False),  # its folder under the home (adapter + optimizer state)
    Column("created_at", UTCDateTime, nullable=False),
)
