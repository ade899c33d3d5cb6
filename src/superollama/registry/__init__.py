"""The registry: desired and observed state in SQL (SQLite by default, Postgres at scale).

    registry = await open_registry("sqlite:///~/.superollama/registry.db")
    await registry.versions.add(VersionRecord(...))
    await registry.close()

Tables live in ``schema``; ``migrations`` creates and upgrades them (append-only, numbered); the
repositories (``registry.versions``, ``.nodes``, ``.instances``, ``.events``) speak core records and raise
only errors of ``superollama.errors``.
"""

from superollama.registry._join_tokens import JoinTokenRecord, JoinTokenRepository
from superollama.registry._webhooks import Delivery, WebhookRecord
from superollama.registry.db import Registry, open_registry
from superollama.registry.migrations import MIGRATIONS, Migration, current_version, migrate
from superollama.registry.repos import EventRepository, InstanceRepository, NodeRepository, VersionRepository

__all__ = [
    "MIGRATIONS",
    "Delivery",
    "EventRepository",
    "InstanceRepository",
    "JoinTokenRecord",
    "JoinTokenRepository",
    "Migration",
    "NodeRepository",
    "Registry",
    "VersionRepository",
    "WebhookRecord",
    "current_version",
    "migrate",
    "open_registry",
]
