"""Append-only numbered migrations, from the first table on.

Each migration is a function of a synchronous ``Connection`` (run through ``AsyncConnection.run_sync``), so
the same code runs on SQLite and Postgres. ``migrate`` applies the pending ones in order, in one
transaction, and records each in ``schema_migrations``; it is idempotent. Two processes starting at once
are serialised: on Postgres by a transaction-scoped advisory lock, on SQLite by ``BEGIN IMMEDIATE`` (the
engines of ``open_registry`` begin write transactions that way).

Never edit a migration that has shipped: add the next number. A migration freezes the tables it touches as
they were at that point (it does not import ``schema.py``), so replaying history stays exact.

A migration that moves a secret (7: secrets out of ``connections.url``) has a ``seal_step`` too: it runs
after ``upgrade``, in the same transaction, with the ``seal`` function given to ``migrate`` (the node's
``SecretBox``, which this layer cannot import). Without one it fails, and nothing is applied, if there is
a secret to seal (an empty database needs none).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    inspect,
    select,
    text,
)

from superollama.core.credentials import split_url
from superollama.errors import RegistryError
from superollama.registry._errors import mapped
from superollama.registry.engine import AsyncEngine
from superollama.registry.schema import NAMING_CONVENTION, Json, UTCDateTime

__all__ = ["MIGRATIONS", "Migration", "Sealer", "current_version", "migrate"]

_LOCKED_RETRIES: Final = 20  # SQLite "database is locked" at once: tries again, 0.05 s .. 1 s apart

# First key of the Postgres advisory lock (the second is a hash of the current schema): "SOMG".
_LOCK_CLASS: Final = 0x534F4D47


Sealer = Callable[[str], str]  # a secret → what is stored for it (``enc:…``)


@dataclass(frozen=True)
class Migration:
    """One numbered step of the schema's history (``seal_step``: see the module's docstring)."""

    version: int
    name: str
    upgrade: Callable[[Connection], None]
    seal_step: Callable[[Connection, Sealer | None], None] | None = None


_bookkeeping = MetaData()
schema_migrations = Table(
    "schema_migrations",
    _bookkeeping,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String, nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)


def _m0001_initial(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "models",
        md,
        Column("name", String, primary_key=True),
        Column("created_at", UTCDateTime, nullable=False),
    )
    Table(
        "versions",
        md,
        Column("name", String, primary_key=True),
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
    Table(
        "nodes",
        md,
        Column("name", String, primary_key=True),
        Column("address", String, nullable=False),
        Column("state", String, nullable=False),
        Column("inventory", Json(), nullable=False),
        Column("last_seen", UTCDateTime, nullable=True),
    )
    Table(
        "instances",
        md,
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
    Table(
        "events",
        md,
        Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("created_at", UTCDateTime, nullable=False, index=True),
        Column("actor", String, nullable=False),
        Column("action", String, nullable=False),
        Column("target", String, nullable=False, index=True),
        Column("result", String, nullable=False),
        Column("detail", Json(), nullable=False),
    )
    md.create_all(conn)


def _m0002_connections(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "connections",
        md,
        Column("name", String, primary_key=True),
        Column("kind", String, nullable=False),
        Column("url", String, nullable=False),
        Column("secret", Text, nullable=True),
        Column("enabled", Boolean, nullable=False),
        Column("options", Json(), nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )
    md.create_all(conn)


def _m0003_jobs(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "jobs",
        md,
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
    md.create_all(conn)


def _m0004_api_keys(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "api_keys",
        md,
        Column("id", String, primary_key=True),
        Column("name", String, nullable=False),
        Column("prefix", String, nullable=False, index=True),
        Column("hash", String, nullable=False),
        Column("role", String, nullable=False),
        Column("models", Json(), nullable=False),
        Column("rpm", Integer, nullable=True),
        Column("tpm", Integer, nullable=True),
        Column("model_limits", Json(), nullable=False),
        Column("budget_usd", Float, nullable=True),
        Column("budget_period", String, nullable=False),
        Column("expires_at", UTCDateTime, nullable=True),
        Column("revoked_at", UTCDateTime, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        Column("last_used_at", UTCDateTime, nullable=True),
        Index("ix_api_keys_hash", "hash", unique=True),
    )
    md.create_all(conn)


def _m0005_usage(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "usage",
        md,
        Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("created_at", UTCDateTime, nullable=False, index=True),
        Column("request_id", String, nullable=False),
        Column("key_id", String, nullable=True, index=True),
        Column("key_prefix", String, nullable=True),
        Column("protocol", String, nullable=False),
        Column("operation", String, nullable=False),
        Column("model", String, nullable=False, index=True),
        Column("version", String, nullable=True),
        Column("instance", String, nullable=True),
        Column("connection", String, nullable=True),
        Column("node", String, nullable=True),
        Column("status", Integer, nullable=False),
        Column("stream", Boolean, nullable=False),
        Column("prompt_tokens", Integer, nullable=True),
        Column("completion_tokens", Integer, nullable=True),
        Column("ttft", Float, nullable=True),
        Column("load_wait", Float, nullable=True),
        Column("latency", Float, nullable=False),
        Column("cost", Float, nullable=True),
        Column("error_type", String, nullable=True),
    )
    md.create_all(conn)


def _m0006_usage_estimated(conn: Connection) -> None:
    """Ledger rows whose tokens we estimated (the backend reported no usage); NULL reads as false."""
    conn.execute(text("ALTER TABLE usage ADD COLUMN usage_estimated BOOLEAN"))


def _m0007_connection_url_secrets(conn: Connection) -> None:
    """Secrets a connection's URL carried (user info, ``?api-key=…``) get a column of their own."""
    conn.execute(text("ALTER TABLE connections ADD COLUMN url_secret TEXT"))


def _m0007_seal_url_secrets(conn: Connection, seal: Sealer | None) -> None:
    """Every existing connection whose URL carries a secret keeps only its public URL in ``url``; the
    secrets move, encrypted, to ``url_secret`` (``UrlSecrets`` as JSON, sealed)."""
    md = MetaData()
    table = Table(
        "connections",
        md,
        Column("name", String, primary_key=True),
        Column("url", String, nullable=False),
        Column("url_secret", Text, nullable=True),
    )
    for name, url in conn.execute(select(table.c.name, table.c.url)).all():
        public, secrets = split_url(url)
        if not secrets:
            continue
        if seal is None:
            raise RegistryError(
                f"connection {name!r} has a secret in its URL: open this registry with the node's secret "
                "key (`superollama serve`) to encrypt it"
            )
        sealed = seal(json.dumps(secrets.to_json()))
        conn.execute(table.update().where(table.c.name == name).values(url=public, url_secret=sealed))


def _m0008_deployments(conn: Connection) -> None:
    """Deployments (one row per stage: its weighted targets) and the target sets they had before."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "deployments",
        md,
        Column("name", String, primary_key=True),
        Column("stage", String, primary_key=True),
        Column("targets", Json(), nullable=False),
        Column("sticky", String, nullable=False),
        Column("enabled", Boolean, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )
    Table(
        "deployment_history",
        md,
        Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("name", String, nullable=False),
        Column("stage", String, nullable=False),
        Column("targets", Json(), nullable=False),
        Column("sticky", String, nullable=False),
        Column("replaced_at", UTCDateTime, nullable=False),
        Index("ix_deployment_history_name_stage", "name", "stage"),
    )
    md.create_all(conn)


def _m0009_change_feed(conn: Connection) -> None:
    """Several gateways on one registry: a generation per kind of change (bumped in the transaction of
    every change, ``Database.write``), the gateways alive (a heartbeat row each) and which gateway runs
    each job (so the reconciler leader can end the jobs of a gateway that died)."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    generations = Table(
        "generations",
        md,
        Column("name", String, primary_key=True),
        Column("value", BigInteger, nullable=False),
    )
    Table(
        "gateways",
        md,
        Column("id", String, primary_key=True),
        Column("host", String, nullable=False),
        Column("pid", Integer, nullable=False),
        Column("url", String, nullable=True),
        Column("session", Integer, nullable=True),
        Column("generation", BigInteger, nullable=False),
        Column("leader", Boolean, nullable=False),
        Column("started_at", UTCDateTime, nullable=False),
        Column("seen_at", UTCDateTime, nullable=False),
    )
    md.create_all(conn)
    conn.execute(
        generations.insert(),
        [{"name": name, "value": 0} for name in ("all", "catalog", "connections", "deployments", "keys")],
    )
    conn.execute(text("ALTER TABLE jobs ADD COLUMN owner VARCHAR"))


def _m0010_stored_responses(conn: Connection) -> None:
    """Responses of the OpenAI Responses API kept for ``previous_response_id`` and ``GET``/``DELETE``."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "stored_responses",
        md,
        Column("id", String, primary_key=True),
        Column("created_at", UTCDateTime, nullable=False, index=True),
        Column("key_id", String, nullable=True, index=True),
        Column("model", String, nullable=False),
        Column("response", Json(), nullable=False),
        Column("conversation", Json(), nullable=False),
    )
    md.create_all(conn)


def _m0011_webhooks(conn: Connection) -> None:
    """Webhooks (signed deliveries of events), their delivery log, and how far the event log was read."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "webhooks",
        md,
        Column("id", String, primary_key=True),
        Column("url", String, nullable=False),
        Column("events", Json(), nullable=False),
        Column("secret", Text, nullable=False),
        Column("description", String, nullable=False),
        Column("enabled", Boolean, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )
    Table(
        "webhook_deliveries",
        md,
        Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("webhook_id", String, nullable=False, index=True),
        Column("event_id", BigInteger, nullable=True),
        Column("action", String, nullable=False),
        Column("payload", Json(), nullable=False),
        Column("state", String, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("next_at", UTCDateTime, nullable=False, index=True),
        Column("status_code", Integer, nullable=True),
        Column("error", Text, nullable=True),
        Column("duration_ms", Float, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        Index("uq_webhook_deliveries_webhook_id_event_id", "webhook_id", "event_id", unique=True),
    )
    Table(
        "webhook_cursor",
        md,
        Column("name", String, primary_key=True),
        Column("event_id", BigInteger, nullable=False),
    )
    md.create_all(conn)


def _m0012_usage_search_units(conn: Connection) -> None:
    """Rerank requests are billed in search units (Cohere's: a query over up to 100 documents)."""
    conn.execute(text("ALTER TABLE usage ADD COLUMN search_units INTEGER"))


def _rag_tables(md: MetaData) -> None:
    """The tables of migration 13 (files, vector stores and their files and batches, grounding)."""
    Table(
        "files",
        md,
        Column("id", String, primary_key=True),
        Column("key_id", String, nullable=True, index=True),
        Column("filename", String, nullable=False),
        Column("purpose", String, nullable=False, index=True),
        Column("bytes", BigInteger, nullable=False),
        Column("digest", String, nullable=False, index=True),
        Column("status", String, nullable=False),
        Column("created_at", UTCDateTime, nullable=False, index=True),
        Column("expires_at", UTCDateTime, nullable=True),
    )
    Table(
        "vector_stores",
        md,
        Column("id", String, primary_key=True),
        Column("key_id", String, nullable=True, index=True),
        Column("name", String, nullable=True),
        Column("description", Text, nullable=True),
        Column("metadata", Json(), nullable=False),
        Column("embedding_model", String, nullable=False),
        Column("engine", String, nullable=False),
        Column("expires_after", Json(), nullable=True),
        Column("created_at", UTCDateTime, nullable=False, index=True),
        Column("last_active_at", UTCDateTime, nullable=False),
    )
    Table(
        "vector_store_files",
        md,
        Column("vector_store_id", String, primary_key=True),
        Column("file_id", String, primary_key=True),
        Column("batch_id", String, nullable=True, index=True),
        Column("status", String, nullable=False),
        Column("last_error", Json(), nullable=True),
        Column("attributes", Json(), nullable=False),
        Column("chunking", Json(), nullable=False),
        Column("usage_bytes", BigInteger, nullable=False),
        Column("chunks", Integer, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
    )
    Table(
        "vector_store_file_batches",
        md,
        Column("id", String, primary_key=True),
        Column("vector_store_id", String, nullable=False, index=True),
        Column("cancelled", Boolean, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
    )
    Table(
        "groundings",
        md,
        Column("name", String, primary_key=True),
        Column("vector_store_ids", Json(), nullable=False),
        Column("top_k", Integer, nullable=False),
        Column("score_threshold", Float, nullable=True),
        Column("template", Text, nullable=True),
        Column("updated_at", UTCDateTime, nullable=False),
    )


def _m0013_files_and_vector_stores(conn: Connection) -> None:
    """OpenAI files (their bytes in the home's files blob store, not here), vector stores with their files
    and file batches (chunks live in the vector store engine), and the grounding of chat per model or
    deployment."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    _rag_tables(md)
    md.create_all(conn)


def _m0014_rollouts_shadow(conn: Connection) -> None:
    """Canary rollouts (one row per deployment stage: its policy, state and decisions), each gateway
    process's per-target window stats (what the leader's analysis sums), and shadow comparisons."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "rollouts",
        md,
        Column("name", String, primary_key=True),
        Column("stage", String, primary_key=True),
        Column("state", String, nullable=False),
        Column("stable", String, nullable=False),
        Column("target", String, nullable=False),
        Column("weight", Integer, nullable=False),
        Column("policy", Json(), nullable=False),
        Column("decisions", Json(), nullable=False),
        Column("next_at", UTCDateTime, nullable=False),
        Column("started_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )
    Table(
        "target_windows",
        md,
        Column("reporter", String, primary_key=True),
        Column("deployment", String, primary_key=True),
        Column("target", String, primary_key=True),
        Column("count", Integer, nullable=False),
        Column("errors", Integer, nullable=False),
        Column("buckets", Json(), nullable=False),
        Column("dropped", Integer, nullable=False),
        Column("reported_at", UTCDateTime, nullable=False),
    )
    Table(
        "shadow_samples",
        md,
        Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("deployment", String, nullable=False),
        Column("target", String, nullable=False),
        Column("primary_target", String, nullable=False),
        Column("at", UTCDateTime, nullable=False),
        Column("primary_latency", Float, nullable=False),
        Column("shadow_latency", Float, nullable=True),
        Column("primary_length", Integer, nullable=False),
        Column("shadow_length", Integer, nullable=True),
        Column("exact", Boolean, nullable=False),
        Column("similarity", Float, nullable=True),
        Column("error", String, nullable=True),
        Index("ix_shadow_samples_deployment", "deployment", "id"),
    )
    md.create_all(conn)


def _m0015_batches(conn: Connection) -> None:
    """OpenAI batches: one row per batch (its status, timestamps, counts and files), and one per request
    of its input file, written as each finishes, so a restarted leader sends only what is still pending."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "batches",
        md,
        Column("id", String, primary_key=True),
        Column("key_id", String, nullable=True, index=True),
        Column("key_prefix", String, nullable=True),
        Column("endpoint", String, nullable=False),
        Column("input_file_id", String, nullable=False),
        Column("completion_window", String, nullable=False),
        Column("status", String, nullable=False, index=True),
        Column("metadata", Json(), nullable=False),
        Column("errors", Json(), nullable=True),
        Column("output_file_id", String, nullable=True),
        Column("error_file_id", String, nullable=True),
        Column("total", Integer, nullable=False),
        Column("completed", Integer, nullable=False),
        Column("failed", Integer, nullable=False),
        Column("input_tokens", BigInteger, nullable=False),
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
    Table(
        "batch_requests",
        md,
        Column("batch_id", String, primary_key=True),
        Column("line", Integer, primary_key=True, autoincrement=False),
        Column("custom_id", String, nullable=False),
        Column("body", Json(), nullable=False),
        Column("state", String, nullable=False),
        Column("status_code", Integer, nullable=True),
        Column("request_id", String, nullable=True),
        Column("response", Json(), nullable=True),
        Column("error", Json(), nullable=True),
        Column("finished_at", UTCDateTime, nullable=True),
        Index("ix_batch_requests_batch_id_state", "batch_id", "state"),
    )
    md.create_all(conn)


def _m0016_fine_tuning(conn: Connection) -> None:
    """OpenAI fine-tuning jobs, their events (messages and loss per step) and their checkpoints (the
    adapter and optimizer state on the home's disk, so a restarted leader resumes the job)."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    event_id = BigInteger().with_variant(Integer(), "sqlite")
    Table(
        "fine_tuning_jobs",
        md,
        Column("id", String, primary_key=True),
        Column("key_id", String, nullable=True, index=True),
        Column("model", String, nullable=False),
        Column("training_file", String, nullable=False),
        Column("validation_file", String, nullable=True),
        Column("suffix", String, nullable=True),
        Column("seed", Integer, nullable=False),
        Column("hyperparameters", Json(), nullable=False),
        Column("status", String, nullable=False, index=True),
        Column("fine_tuned_model", String, nullable=True),
        Column("trained_tokens", BigInteger, nullable=True),
        Column("error", Json(), nullable=True),
        Column("metadata", Json(), nullable=False),
        Column("created_at", UTCDateTime, nullable=False, index=True),
        Column("finished_at", UTCDateTime, nullable=True),
    )
    Table(
        "fine_tuning_events",
        md,
        Column("id", event_id, primary_key=True, autoincrement=True),
        Column("job_id", String, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("level", String, nullable=False),
        Column("type", String, nullable=False),
        Column("message", Text, nullable=False),
        Column("data", Json(), nullable=True),
        Index("ix_fine_tuning_events_job", "job_id", "id"),
    )
    Table(
        "fine_tuning_checkpoints",
        md,
        Column("job_id", String, primary_key=True),
        Column("step", Integer, primary_key=True),
        Column("id", String, nullable=False),
        Column("metrics", Json(), nullable=False),
        Column("path", String, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
    )
    md.create_all(conn)


def _m0017_join_tokens(conn: Connection) -> None:
    """Join tokens: what ``agent --join`` shows the control plane to add a machine to the cluster. Only
    their SHA-256 is kept; a token joins nodes and authenticates nothing else."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "join_tokens",
        md,
        Column("id", String, primary_key=True),
        Column("name", String, nullable=False),
        Column("prefix", String, nullable=False),
        Column("hash", String, nullable=False),
        Column("expires_at", UTCDateTime, nullable=True),
        Column("revoked_at", UTCDateTime, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        Column("last_used_at", UTCDateTime, nullable=True),
        Column("last_node", String, nullable=True),
        Index("ix_join_tokens_hash", "hash", unique=True),
        Index("ix_join_tokens_name", "name", unique=True),
    )
    md.create_all(conn)


def _m0018_version_placements(conn: Connection) -> None:
    """A version scaled by itself (``superollama scale VERSION --replicas N [--device …]``): how many
    instances of it run and where they may (a deployment's targets keep theirs in ``targets``)."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "version_placements",
        md,
        Column("version", String, primary_key=True),
        Column("replicas", Integer, nullable=False),
        Column("placement", Json(), nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )
    md.create_all(conn)


def _m0019_usage_write_indexes(conn: Connection) -> None:
    """The ledger's rows are read by time only (``created_at``); the indexes on ``key_id`` and ``model``
    served no query and cost every request's row a third of its insert (two more B-trees to update).
    Their names are ``NAMING_CONVENTION``'s; on Postgres the connection's search path holds the registry's
    schema, where they are."""
    for name in ("ix_usage_key_id", "ix_usage_model"):
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "create models, versions, nodes, instances, events", _m0001_initial),
    Migration(2, "create connections", _m0002_connections),
    Migration(3, "create jobs", _m0003_jobs),
    Migration(4, "create api_keys", _m0004_api_keys),
    Migration(5, "create usage", _m0005_usage),
    Migration(6, "add usage.usage_estimated", _m0006_usage_estimated),
    Migration(
        7,
        "add connections.url_secret; move URL secrets there, encrypted",
        _m0007_connection_url_secrets,
        _m0007_seal_url_secrets,
    ),
    Migration(8, "create deployments, deployment_history", _m0008_deployments),
    Migration(9, "create generations and gateways; add jobs.owner", _m0009_change_feed),
    Migration(10, "create stored_responses", _m0010_stored_responses),
    Migration(11, "create webhooks, webhook_deliveries, webhook_cursor", _m0011_webhooks),
    Migration(12, "add usage.search_units", _m0012_usage_search_units),
    Migration(
        13,
        "create files, vector_stores, vector_store_files, vector_store_file_batches, groundings",
        _m0013_files_and_vector_stores,
    ),
    Migration(14, "create rollouts, target_windows, shadow_samples", _m0014_rollouts_shadow),
    Migration(15, "create batches, batch_requests", _m0015_batches),
    Migration(16, "create fine_tuning_jobs, fine_tuning_events, fine_tuning_checkpoints", _m0016_fine_tuning),
    Migration(17, "create join_tokens", _m0017_join_tokens),
    Migration(18, "create version_placements", _m0018_version_placements),
    Migration(19, "drop the indexes on usage.key_id and usage.model", _m0019_usage_write_indexes),
)


def _check(migrations: Sequence[Migration]) -> None:
    numbers = [m.version for m in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RegistryError(f"migrations must be numbered 1, 2, 3 … in order, got {numbers}")


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:cls, hashtext(coalesce(current_schema(), '')))"),
            {"cls": _LOCK_CLASS},
        )


def _applied(conn: Connection) -> set[int]:
    if not inspect(conn).has_table(schema_migrations.name):
        return set()
    return set(conn.scalars(select(schema_migrations.c.version)))


def _migrate_sync(conn: Connection, migrations: Sequence[Migration], seal: Sealer | None) -> list[int]:
    _lock(conn)
    schema_migrations.create(conn, checkfirst=True)
    applied = _applied(conn)
    done: list[int] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        migration.upgrade(conn)
        if migration.seal_step is not None:
            migration.seal_step(conn, seal)
        conn.execute(
            schema_migrations.insert().values(
                version=migration.version, name=migration.name, applied_at=datetime.now(UTC)
            )
        )
        done.append(migration.version)
    return done


async def migrate(
    engine: AsyncEngine, migrations: Sequence[Migration] = MIGRATIONS, *, seal: Sealer | None = None
) -> list[int]:
    """Apply the pending migrations in order, in one transaction; return the numbers applied. ``seal``
    encrypts a secret a migration moves (see the module's docstring).

    On SQLite, processes opening a new database together (``serve --workers N``) can be refused with
    "database is locked" without SQLite waiting its busy timeout: while one connection turns the file
    to WAL mode, another's lock request fails at once. The transaction is then tried again, a bounded
    number of times, after a short pause (it changes nothing until it commits)."""
    _check(migrations)
    steps = tuple(migrations)
    attempt = 0
    while True:
        try:
            with mapped("migration"):
                async with engine.begin() as conn:
                    return await conn.run_sync(_migrate_sync, steps, seal)
        except RegistryError as exc:
            locked = engine.dialect.name == "sqlite" and "database is locked" in str(exc.__cause__)
            attempt += 1
            if not locked or attempt > _LOCKED_RETRIES:
                raise
            await asyncio.sleep(0.05 * attempt)


def _current_sync(conn: Connection) -> int:
    if not inspect(conn).has_table(schema_migrations.name):
        return 0
    return int(conn.scalar(select(func.coalesce(func.max(schema_migrations.c.version), 0))) or 0)


async def current_version(engine: AsyncEngine) -> int:
    """The highest migration applied to this database; 0 for an empty one."""
    with mapped("reading the schema version"):
        async with engine.connect() as conn:
            return await conn.run_sync(_current_sync)
