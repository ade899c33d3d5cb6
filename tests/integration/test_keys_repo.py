"""API keys in the registry (a SQLite file and a fresh Postgres schema), and the key use cases on top."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from superollama.core.types import KeyRecord
from superollama.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from superollama.registry import Registry, open_registry
from superollama.security import KeyCache, KeyManager, KeySpec, generate_key, hash_key

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def registry(db_url: str, clock: Clock) -> AsyncIterator[Registry]:
    reg = await open_registry(db_url, clock=clock)
    try:
        yield reg
    finally:
        await reg.close()


def key_record(key_id: str = "key_1", **changes: Any) -> KeyRecord:
    new = generate_key()
    values: dict[str, Any] = {"id": key_id, "name": "ci", "prefix": new.prefix, "hash": new.hash}
    values.update(changes)
    return KeyRecord(**values)


async def test_add_get_and_round_trip_every_field(registry: Registry) -> None:
    record = key_record(
        role="admin",
        models=("smollm2:*", "openai/gpt-4o"),
        rpm=60,
        tpm=100_000,
        model_limits={"smollm2:*": {"rpm": 5, "tpm": 500}},
        budget_usd=12.5,
        budget_period="week",
        expires_at=T0 + timedelta(days=30),
    )
    added = await registry.keys.add(record)
    assert added == KeyRecord(**{**record.__dict__, "created_at": T0})
    assert await registry.keys.get("key_1") == added
    assert await registry.keys.get(record.prefix) == added  # by visible prefix too
    assert await registry.keys.find_by_hash(record.hash) == added
    assert await registry.keys.find_by_hash(hash_key("nope")) is None
    assert await registry.keys.find("nope") is None
    with pytest.raises(NotFound):
        await registry.keys.get("nope")


async def test_id_and_hash_are_unique(registry: Registry) -> None:
    first = await registry.keys.add(key_record())
    with pytest.raises(Conflict):
        await registry.keys.add(key_record())  # same id
    with pytest.raises(Conflict):
        await registry.keys.add(key_record("key_2", hash=first.hash))  # same hash


async def test_list_revoke_rotate(registry: Registry, clock: Clock) -> None:
    a = await registry.keys.add(key_record("key_a"))
    clock.now += timedelta(seconds=1)
    b = await registry.keys.add(key_record("key_b", rpm=10))
    assert [k.id for k in await registry.keys.list()] == ["key_a", "key_b"]

    revoked = await registry.keys.revoke("key_a", at=T0 + timedelta(hours=1))
    assert revoked.revoked_at == T0 + timedelta(hours=1)
    again = await registry.keys.revoke("key_a", at=T0 + timedelta(hours=2))
    assert again.revoked_at == T0 + timedelta(hours=1)  # the first revocation stands
    assert [k.id for k in await registry.keys.list(include_revoked=False)] == ["key_b"]
    with pytest.raises(NotFound):
        await registry.keys.revoke("ghost")

    new = generate_key()
    rotated = await registry.keys.rotate("key_b", prefix=new.prefix, key_hash=new.hash)
    assert (rotated.id, rotated.rpm, rotated.created_at) == (b.id, 10, b.created_at)
    assert (rotated.prefix, rotated.hash) == (new.prefix, new.hash)
    assert await registry.keys.find_by_hash(b.hash) is None
    with pytest.raises(Conflict, match="revoked"):
        await registry.keys.rotate("key_a", prefix=new.prefix, key_hash=hash_key("other"))
    with pytest.raises(NotFound):
        await registry.keys.rotate("ghost", prefix=new.prefix, key_hash=hash_key("other"))
    with pytest.raises(Conflict):
        await registry.keys.rotate("key_b", prefix="so-x", key_hash=a.hash)  # a hash already taken


async def test_touch_in_batches_never_backwards(registry: Registry) -> None:
    await registry.keys.add(key_record("key_a"))
    await registry.keys.add(key_record("key_b"))
    await registry.keys.touch({"key_a": T0 + timedelta(minutes=5), "key_b": T0, "ghost": T0})
    await registry.keys.touch({"key_a": T0 + timedelta(minutes=1)})  # older: ignored
    await registry.keys.touch({})
    used = {k.id: k.last_used_at for k in await registry.keys.list()}
    assert used == {"key_a": T0 + timedelta(minutes=5), "key_b": T0}


async def test_key_manager_records_events_and_reloads_the_cache(registry: Registry, clock: Clock) -> None:
    cache = KeyCache(registry.keys, clock=lambda: clock().timestamp())
    manager = KeyManager(registry.keys, registry.events, cache, clock=clock)
    issued = await manager.create(
        KeySpec(name=" ci ", role="user", models=("smollm2:*",), rpm=5, expires_at=T0 + timedelta(days=1))
    )
    assert issued.key not in repr(issued)
    assert issued.record.name == "ci" and issued.record.hash == hash_key(issued.key)
    assert cache.lookup(issued.key).key_id == issued.record.id  # reloaded at once

    rotated = await manager.rotate(issued.record.prefix)
    assert rotated.record.id == issued.record.id and rotated.key != issued.key
    assert cache.lookup(rotated.key).rpm == 5
    with pytest.raises(Unauthorized):
        cache.lookup(issued.key)

    await manager.revoke(rotated.record.id)
    with pytest.raises(Unauthorized, match="revoked"):
        cache.lookup(rotated.key)

    events = await registry.events.list(target=issued.record.id)
    assert [e.action for e in reversed(events)] == ["key.create", "key.rotate", "key.revoke"]
    assert events[1].detail["old_prefix"] == issued.record.prefix
    for event in events:  # no secret, no hash in the audit log
        text_of = str(event.detail)
        assert issued.key not in text_of and rotated.key not in text_of
        assert issued.record.hash not in text_of and rotated.record.hash not in text_of


async def test_a_metrics_key_is_stored_and_read_back_with_its_role(registry: Registry, clock: Clock) -> None:
    """The ``metrics`` role needs no schema change: ``keys.role`` is a plain string column."""
    cache = KeyCache(registry.keys, clock=lambda: clock().timestamp())
    manager = KeyManager(registry.keys, registry.events, cache, clock=clock)
    issued = await manager.create(KeySpec(name="prom", role="metrics"))
    assert [k.role for k in await registry.keys.list()] == ["metrics"]
    fresh = KeyCache(registry.keys)
    await fresh.reload()
    principal = fresh.lookup(issued.key)
    assert principal.role == "metrics" and principal.reads_metrics and not principal.uses_models


@pytest.mark.parametrize(
    "spec",
    [
        {"name": ""},
        {"name": "x", "role": "root"},
        {"name": "x", "rpm": 0},
        {"name": "x", "tpm": -5},
        {"name": "x", "model_limits": {"m": {"rpd": 1}}},
        {"name": "x", "budget_usd": -1.0},
        {"name": "x", "budget_period": "year"},
        {"name": "x", "expires_at": datetime(2030, 1, 1)},
    ],
)
def test_key_spec_validation(spec: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        KeySpec(**spec)
