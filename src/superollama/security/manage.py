"""Key management use cases: create, list, show, revoke, rotate — each recorded as an event and followed by a
reload of the key cache. The admin API and the CLI (offline, on the registry directly) both use this.

It works on a repository typed by ``KeyStore`` and an event log typed by ``EventSink`` (``registry.keys``
and ``registry.events`` fit), so this room does not import the registry.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from superollama.core.types import EventRecord, KeyRecord
from superollama.errors import InvalidRequest
from superollama.security.budgets import PERIODS
from superollama.security.keys import ROLES, KeyCache, generate_key

__all__ = ["EventSink", "IssuedKey", "KeyManager", "KeySpec", "KeyStore", "key_state", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``3600`` (seconds) → a positive ``timedelta``."""
    match = _DURATION.match(value)
    if match is None or float(match.group(1)) <= 0:
        raise InvalidRequest(f"{value!r} is not a duration like 30d, 12h, 90m, 2w", param="expires_in")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


class KeyStore(Protocol):
    async def add(self, record: KeyRecord) -> KeyRecord: ...
    async def get(self, ident: str) -> KeyRecord: ...
    async def list(self) -> Sequence[KeyRecord]: ...
    async def revoke(self, key_id: str, *, at: datetime | None = None) -> KeyRecord: ...
    async def rotate(self, key_id: str, *, prefix: str, key_hash: str) -> KeyRecord: ...


class EventSink(Protocol):
    async def add(self, record: EventRecord) -> EventRecord: ...


def _positive(value: int | None, param: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise InvalidRequest(f"'{param}' must be a positive integer", param=param)


@dataclass(frozen=True)
class KeySpec:
    """What a new key may do. Validated on construction (``InvalidRequest`` naming the bad field)."""

    name: str
    role: str = "user"
    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    model_limits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    budget_usd: float | None = None
    budget_period: str = "month"
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > 200:
            raise InvalidRequest("'name' is required (1 to 200 characters)", param="name")
        if self.role not in ROLES:
            raise InvalidRequest(f"'role' must be one of {', '.join(ROLES)}", param="role")
        if not all(isinstance(m, str) and m.strip() for m in self.models):
            raise InvalidRequest("'models' must be a list of model names or patterns", param="models")
        _positive(self.rpm, "rpm")
        _positive(self.tpm, "tpm")
        for pattern, limits in self.model_limits.items():
            if not isinstance(limits, Mapping) or not limits or not set(limits) <= {"rpm", "tpm"}:
                raise InvalidRequest(
                    f"model_limits[{pattern!r}] must be {{'rpm': n, 'tpm': n}}", param="model_limits"
                )
            for kind, value in limits.items():
                _positive(value, f"model_limits.{kind}")
        if self.budget_usd is not None and (
            isinstance(self.budget_usd, bool)
            or not isinstance(self.budget_usd, int | float)
            or self.budget_usd < 0
        ):
            raise InvalidRequest("'budget_usd' must be a number ≥ 0", param="budget_usd")
        if self.budget_period not in PERIODS:
            periods = ", ".join(PERIODS)
            raise InvalidRequest(f"'budget_period' must be one of {periods}", param="budget_period")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise InvalidRequest("'expires_at' needs a time zone", param="expires_at")


@dataclass(frozen=True)
class IssuedKey:
    """A key just created or rotated: ``key`` is the only time the secret is ever shown."""

    key: str = field(repr=False)
    record: KeyRecord


def key_state(record: KeyRecord, now: datetime) -> str:
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return "active"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return "key_" + secrets.token_hex(6)


class KeyManager:
    def __init__(
        self,
        store: KeyStore,
        events: EventSink,
        cache: KeyCache | None = None,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._events = events
        self._cache = cache
        self._clock = clock

    async def create(self, spec: KeySpec, *, actor: str = "api") -> IssuedKey:
        new = generate_key()
        record = KeyRecord(
            id=_new_id(),
            name=spec.name.strip(),
            prefix=new.prefix,
            hash=new.hash,
            role=spec.role,
            models=tuple(m.strip() for m in spec.models),
            rpm=spec.rpm,
            tpm=spec.tpm,
            model_limits={p: dict(v) for p, v in spec.model_limits.items()},
            budget_usd=None if spec.budget_usd is None else float(spec.budget_usd),
            budget_period=spec.budget_period,
            expires_at=spec.expires_at,
            created_at=self._clock(),
        )
        stored = await self._store.add(record)
        await self._event("key.create", stored, actor)
        await self._reload()
        return IssuedKey(new.key, stored)

    async def list(self) -> list[KeyRecord]:
        return list(await self._store.list())

    async def get(self, ident: str) -> KeyRecord:
        return await self._store.get(ident)

    async def revoke(self, ident: str, *, actor: str = "api") -> KeyRecord:
        record = await self._store.revoke((await self._store.get(ident)).id, at=self._clock())
        await self._event("key.revoke", record, actor)
        await self._reload()
        return record

    async def rotate(self, ident: str, *, actor: str = "api") -> IssuedKey:
        current = await self._store.get(ident)
        new = generate_key()
        record = await self._store.rotate(current.id, prefix=new.prefix, key_hash=new.hash)
        await self._event("key.rotate", record, actor, {"old_prefix": current.prefix})
        await self._reload()
        return IssuedKey(new.key, record)

    async def _event(
        self, action: str, record: KeyRecord, actor: str, extra: Mapping[str, Any] | None = None
    ) -> None:
        detail = {"name": record.name, "prefix": record.prefix, "role": record.role, **(extra or {})}
        await self._events.add(EventRecord(action=action, target=record.id, actor=actor, detail=detail))

    async def _reload(self) -> None:
        if self._cache is not None:
            await self._cache.reload()
