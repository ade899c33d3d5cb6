"""API keys: make them, hash them, and find the caller behind one without touching the database.

A key is ``so-`` + 8 visible characters (the *prefix*, shown in lists and logs) + 40 random URL-safe
characters (240 bits from ``secrets``). The registry keeps only its SHA-256: keys are random, so a plain
hash is as strong as a slow KDF here and costs a microsecond per request.

``KeyCache`` is what the request path reads: every key of the registry indexed by hash, rebuilt by
``reload()`` when keys change (the admin API calls it after each change). A lookup is one hash and one dict
access; the stored hash is compared again with ``hmac.compare_digest``. Presented keys are not kept: a memo
of them would save the hash (~0.6 µs a request) but hold live keys in the process's memory.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import logging
import secrets
import string
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from superollama.core.types import KeyRecord
from superollama.errors import SuperOllamaError, Unauthorized

__all__ = [
    "KEY_SCHEME",
    "ROLES",
    "KeyCache",
    "KeySource",
    "ModelLimit",
    "NewKey",
    "Principal",
    "generate_key",
    "hash_key",
    "looks_like_key",
]

log = logging.getLogger("superollama.security")

KEY_SCHEME = "so-"
PREFIX_CHARS = 8
SECRET_BYTES = 30  # 40 URL-safe base64 characters
ROLES = ("admin", "user", "metrics", "viewer")
"""``admin``: everything; ``user``: the data plane (``/v1/*``, ``/api/*``), within its model patterns;
``metrics``: ``GET /metrics`` only (what a Prometheus scraper is given), nothing else; ``viewer``: reads
the admin API (``GET``) and ``/metrics`` and signs in to the web UI read-only; it changes nothing and
calls no model."""
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_KEY_LENGTH = len(KEY_SCHEME) + PREFIX_CHARS + 40


@dataclass(frozen=True)
class NewKey:
    """A freshly generated key: ``key`` is shown once, then only ``prefix`` and ``hash`` are kept."""

    key: str
    prefix: str
    hash: str

    def __repr__(self) -> str:  # never print the secret by accident
        return f"NewKey(prefix={self.prefix!r})"


def hash_key(key: str) -> str:
    """SHA-256 of the whole key, hex."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def generate_key() -> NewKey:
    prefix = KEY_SCHEME + "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_CHARS))
    key = prefix + secrets.token_urlsafe(SECRET_BYTES)
    return NewKey(key=key, prefix=prefix, hash=hash_key(key))


def looks_like_key(value: str) -> bool:
    """Whether ``value`` has our key's shape (``so-`` and the right length)."""
    return value.startswith(KEY_SCHEME) and len(value) == _KEY_LENGTH


@dataclass(frozen=True)
class ModelLimit:
    """A per-model limit: requests and tokens per minute on the models matching ``pattern``."""

    pattern: str
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's identity and what it may do. Built from a ``KeyRecord``; holds no secret."""

    key_id: str
    name: str
    prefix: str
    role: str = "user"
    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    model_limits: tuple[ModelLimit, ...] = ()
    budget_usd: float | None = None
    budget_period: str = "month"
    expires_at: float | None = None  # time.time() seconds
    revoked_at: float | None = None

    @classmethod
    def from_record(cls, record: KeyRecord) -> Principal:
        return cls(
            key_id=record.id,
            name=record.name,
            prefix=record.prefix,
            role=record.role,
            models=tuple(record.models),
            rpm=record.rpm,
            tpm=record.tpm,
            model_limits=tuple(
                ModelLimit(pattern, limits.get("rpm"), limits.get("tpm"))
                for pattern, limits in record.model_limits.items()
            ),
            budget_usd=record.budget_usd,
            budget_period=record.budget_period,
            expires_at=record.expires_at.timestamp() if record.expires_at else None,
            revoked_at=record.revoked_at.timestamp() if record.revoked_at else None,
        )

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def reads_admin(self) -> bool:
        """Whether this key may read the admin API and sign in to the web UI (admin and viewer)."""
        return self.role in ("admin", "viewer")

    @property
    def reads_metrics(self) -> bool:
        """Whether this key may read ``/metrics`` (the admin, metrics and viewer roles)."""
        return self.role in ("admin", "metrics", "viewer")

    @property
    def uses_models(self) -> bool:
        """Whether this key may call the client APIs at all (a metrics or viewer key may not)."""
        return self.role not in ("metrics", "viewer")

    @property
    def scoped(self) -> bool:
        """Whether this key is limited to some models (it has patterns)."""
        return bool(self.models)

    def allows(self, model: str) -> bool:
        """Whether this key may call ``model``: it matches one of its patterns (no patterns: every model)."""
        return not self.models or any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def model_limit(self, model: str) -> ModelLimit | None:
        """The first per-model limit whose pattern matches ``model``."""
        for limit in self.model_limits:
            if fnmatch.fnmatchcase(model, limit.pattern):
                return limit
        return None


class KeySource(Protocol):
    """Where ``KeyCache`` loads keys from (``registry.keys`` is one)."""

    async def list(self) -> Sequence[KeyRecord]: ...


class KeyUsageSink(Protocol):
    """Where the last use of keys is recorded (``registry.keys`` is one)."""

    async def touch(self, last_used: Mapping[str, datetime]) -> None: ...


class KeyCache:
    """Every key, indexed by hash, in memory. ``lookup`` is what the request path calls.

    ``drain_used()`` hands over the keys used since the last call (id → time) so that the caller writes
    ``last_used_at`` in batches, off the request path (``registry.keys.touch``).

    A key that was found is remembered as sent (``_found``), so that its next request costs a dict lookup
    rather than a SHA-256 (a fresh OpenSSL digest object each time: ~1 % of a governed request's CPU).
    Only keys that exist are remembered, so a client sending made-up keys cannot grow it; it is dropped
    whole with every ``load``, so a revoked or rotated key is looked up by its hash again. It holds the
    keys in clear, as the requests that carry them do, in this process's memory only.
    """

    def __init__(self, source: KeySource | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._source = source
        self._clock = clock
        self._by_hash: Mapping[str, tuple[str, Principal]] = {}
        self._found: dict[str, Principal] = {}  # key as sent → its principal (see the class docstring)
        self._used: dict[str, float] = {}

    async def reload(self) -> int:
        """Load every key from the source again; returns how many there are."""
        if self._source is None:
            return len(self._by_hash)
        self.load(await self._source.list())
        return len(self._by_hash)

    def load(self, records: Iterable[KeyRecord]) -> None:
        """Replace the index with these records (one swap: lookups never see half of it)."""
        self._by_hash = {r.hash: (r.hash, Principal.from_record(r)) for r in records}
        self._found = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    @property
    def has_keys(self) -> bool:
        """Whether any key exists, revoked ones included (``auth=auto`` then requires a key)."""
        return bool(self._by_hash)

    @property
    def has_admin_keys(self) -> bool:
        """Whether an admin key that is not revoked exists (``auth=auto`` then guards the admin API)."""
        now = self._clock()
        return any(
            p.is_admin
            and (p.revoked_at is None or p.revoked_at > now)
            and (p.expires_at is None or p.expires_at > now)
            for _, p in self._by_hash.values()
        )

    def by_id(self, key_id: str, prefix: str) -> Principal:
        """The principal of the key ``key_id`` whose prefix is still ``prefix`` (a web UI session names
        its key so); ``Unauthorized`` once that key is gone, rotated, revoked or expired — the session
        ends with its key."""
        principal = next(
            (p for _, p in self._by_hash.values() if p.key_id == key_id and p.prefix == prefix), None
        )
        if principal is None:
            raise Unauthorized("the session's API key no longer exists: sign in again")
        return self._usable(principal)

    def lookup(self, key: str) -> Principal:
        """The principal behind ``key``; ``Unauthorized`` for an unknown, revoked or expired key."""
        principal = self._found.get(key)
        if principal is None:
            digest = hash_key(key)
            entry = self._by_hash.get(digest)
            if entry is None or not hmac.compare_digest(entry[0], digest):
                raise Unauthorized("invalid API key")
            principal = self._found[key] = entry[1]
        return self._usable(principal)

    def _usable(self, principal: Principal) -> Principal:
        now = self._clock()
        if principal.revoked_at is not None and principal.revoked_at <= now:
            raise Unauthorized(f"API key {principal.prefix} has been revoked")
        if principal.expires_at is not None and principal.expires_at <= now:
            when = datetime.fromtimestamp(principal.expires_at, UTC).isoformat(timespec="seconds")
            raise Unauthorized(f"API key {principal.prefix} expired at {when}")
        self._used[principal.key_id] = now
        return principal

    async def upkeep(self, sink: KeyUsageSink, interval: float = 10.0) -> None:
        """Run until cancelled: every ``interval`` seconds record the keys' last use in ``sink``. Keys
        created or revoked elsewhere arrive through the change feed (``control/feed.py``), not by polling."""
        while True:
            await asyncio.sleep(interval)
            used = self.drain_used()
            try:
                await sink.touch(used)
            except SuperOllamaError as exc:
                for key_id, at in used.items():  # not lost: the next round records them
                    self._used[key_id] = max(self._used.get(key_id, 0.0), at.timestamp())
                log.warning("recording the keys' last use failed: %s", exc.message)

    def drain_used(self) -> dict[str, datetime]:
        """Keys used since the last call, with the time of their last use; forgets them."""
        used, self._used = self._used, {}
        return {key_id: datetime.fromtimestamp(t, UTC) for key_id, t in used.items()}
