"""API keys: generation, hashing, the in-memory cache (unknown, revoked, expired), model patterns."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from superollama.core.types import KeyRecord
from superollama.errors import RegistryError, Unauthorized
from superollama.security import KeyCache, Principal, generate_key, hash_key
from superollama.security.admission import bearer_key
from superollama.security.keys import ModelLimit, looks_like_key

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def record(key: str, **changes: object) -> KeyRecord:
    values: dict[str, object] = {
        "id": "key_1",
        "name": "ci",
        "prefix": key[:11],
        "hash": hash_key(key),
        "created_at": T0,
    }
    values.update(changes)
    return KeyRecord(**values)  # type: ignore[arg-type]


class Clock:
    def __init__(self, at: datetime = T0) -> None:
        self.t = at.timestamp()

    def __call__(self) -> float:
        return self.t


def test_generated_keys_have_our_shape_and_are_stored_as_sha256() -> None:
    new = generate_key()
    assert re.fullmatch(r"so-[a-z0-9]{8}[A-Za-z0-9_-]{40}", new.key)
    assert new.prefix == new.key[:11] and new.prefix.startswith("so-")
    assert new.hash == hashlib.sha256(new.key.encode()).hexdigest() == hash_key(new.key)
    assert looks_like_key(new.key)
    assert new.key not in repr(new)  # printing it by accident does not leak the secret
    assert len({generate_key().key for _ in range(200)}) == 200
    assert not looks_like_key("x") and not looks_like_key("sk-" + "a" * 48)


def test_lookup_finds_the_principal_and_records_its_use() -> None:
    new = generate_key()
    clock = Clock()
    cache = KeyCache(clock=clock)
    cache.load([record(new.key, role="admin", models=("smollm2:*",), rpm=60, tpm=1000, budget_usd=5.0)])
    principal = cache.lookup(new.key)
    assert principal.key_id == "key_1" and principal.prefix == new.prefix and principal.is_admin
    assert principal.models == ("smollm2:*",) and principal.rpm == 60 and principal.budget_usd == 5.0
    assert cache.drain_used() == {"key_1": T0}
    assert cache.drain_used() == {}  # handed over once


def test_unknown_key_is_401_without_echoing_it() -> None:
    cache = KeyCache()
    cache.load([record(generate_key().key)])
    other = generate_key().key
    with pytest.raises(Unauthorized) as info:
        cache.lookup(other)
    assert info.value.status == 401 and info.value.code == "invalid_api_key"
    assert other not in info.value.message and other[:11] not in info.value.message
    assert cache.drain_used() == {}


def test_revoked_and_expired_keys_say_which() -> None:
    revoked, expired, later = generate_key(), generate_key(), generate_key()
    clock = Clock()
    cache = KeyCache(clock=clock)
    cache.load(
        [
            record(revoked.key, id="k1", revoked_at=T0 - timedelta(minutes=1)),
            record(expired.key, id="k2", expires_at=T0 - timedelta(seconds=1)),
            record(later.key, id="k3", expires_at=T0 + timedelta(hours=1)),
        ]
    )
    with pytest.raises(Unauthorized, match="revoked") as info:
        cache.lookup(revoked.key)
    assert revoked.prefix in info.value.message and revoked.key not in info.value.message
    with pytest.raises(Unauthorized, match="expired at 2026-03-01T11:59:59"):
        cache.lookup(expired.key)
    assert cache.lookup(later.key).key_id == "k3"
    clock.t += 3600
    with pytest.raises(Unauthorized, match="expired"):
        cache.lookup(later.key)


def test_a_key_revoked_by_a_reload_is_refused_at_once() -> None:
    new = generate_key()
    clock = Clock()
    cache = KeyCache(clock=clock)
    cache.load([record(new.key, rpm=60)])
    assert cache.lookup(new.key).rpm == 60
    cache.load([record(new.key, rpm=60, revoked_at=T0)])  # what the change feed does on a revocation
    with pytest.raises(Unauthorized, match="revoked"):
        cache.lookup(new.key)
    cache.load([record(new.key, rpm=5)])  # an admin's change of its limits: a new principal
    assert cache.lookup(new.key).rpm == 5
    cache.load([])  # deleted
    with pytest.raises(Unauthorized, match="invalid API key"):
        cache.lookup(new.key)


def test_a_found_key_is_not_hashed_again_until_the_next_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second request of a key costs a dict lookup, not a SHA-256; a made-up key is hashed every time
    (never remembered); a load forgets every key, so what it changed applies to keys seen before it."""
    new, other = generate_key(), generate_key().key
    clock = Clock()
    cache = KeyCache(clock=clock)
    cache.load([record(new.key, rpm=60)])
    hashed: list[str] = []

    def counting(key: str) -> str:
        hashed.append(key)
        return hash_key(key)

    monkeypatch.setattr("superollama.security.keys.hash_key", counting)
    assert cache.lookup(new.key).rpm == 60 and cache.lookup(new.key).rpm == 60
    assert hashed == [new.key]
    for _ in range(2):
        with pytest.raises(Unauthorized, match="invalid API key"):
            cache.lookup(other)
    assert hashed == [new.key, other, other]
    assert cache.drain_used() == {"key_1": T0}  # a remembered key's use is recorded all the same
    clock.t += 5
    cache.lookup(new.key)
    assert cache.drain_used() == {"key_1": T0 + timedelta(seconds=5)}
    cache.load([record(new.key, rpm=5)])
    assert cache.lookup(new.key).rpm == 5 and hashed[-1] == new.key and len(hashed) == 4
    cache.load([record(new.key, rpm=5, revoked_at=T0)])
    with pytest.raises(Unauthorized, match="revoked"):
        cache.lookup(new.key)
    with pytest.raises(Unauthorized, match="revoked"):  # refused, not remembered as usable
        cache.lookup(new.key)
    cache.load([])
    with pytest.raises(Unauthorized, match="invalid API key"):
        cache.lookup(new.key)


def test_a_key_is_refused_once_it_expires_or_its_revocation_comes() -> None:
    """A revocation or expiry that was already scheduled at the last load needs no reload to apply."""
    expiring, revoking = generate_key(), generate_key()
    clock = Clock()
    cache = KeyCache(clock=clock)
    cache.load(
        [
            record(expiring.key, id="k1", expires_at=T0 + timedelta(seconds=10)),
            record(revoking.key, id="k2", revoked_at=T0 + timedelta(seconds=20)),
        ]
    )
    assert cache.lookup(expiring.key).key_id == "k1" and cache.lookup(revoking.key).key_id == "k2"
    clock.t += 10
    with pytest.raises(Unauthorized, match="expired"):
        cache.lookup(expiring.key)
    assert cache.lookup(revoking.key).key_id == "k2"
    clock.t += 10
    with pytest.raises(Unauthorized, match="revoked"):
        cache.lookup(revoking.key)


async def test_reload_swaps_the_index_from_its_source() -> None:
    first, second = generate_key(), generate_key()

    class Source:
        def __init__(self) -> None:
            self.records: list[KeyRecord] = [record(first.key)]

        async def list(self) -> Sequence[KeyRecord]:
            return list(self.records)

    source = Source()
    cache = KeyCache(source)
    assert not cache.has_keys
    assert await cache.reload() == 1 and cache.has_keys
    assert cache.lookup(first.key).key_id == "key_1"
    source.records = [record(second.key, id="key_2")]  # the first was rotated away
    await cache.reload()
    assert cache.lookup(second.key).key_id == "key_2"
    with pytest.raises(Unauthorized):
        cache.lookup(first.key)


async def test_upkeep_records_last_use_until_cancelled() -> None:
    """The loop every gateway process runs: the keys used since the last round go to the sink in one
    batch; a round whose write fails is logged, keeps what it could not write for the next round, and the
    loop goes on. It does not reload: keys created or revoked elsewhere come through the change feed
    (``control/feed.py`` calls ``reload``), not by polling."""
    first, second = generate_key(), generate_key()
    records = [record(first.key)]
    touched: list[dict[str, datetime]] = []
    rounds = asyncio.Event()

    class Registry:
        fail_once = True

        async def list(self) -> Sequence[KeyRecord]:
            return list(records)

        async def touch(self, last_used: Mapping[str, datetime]) -> None:
            if self.fail_once:
                self.fail_once = False
                raise RegistryError("database is locked")
            touched.append(dict(last_used))
            rounds.set()

    registry = Registry()
    cache = KeyCache(registry, clock=Clock())
    await cache.reload()
    cache.lookup(first.key)
    records.append(record(second.key, id="key_2"))
    task = asyncio.create_task(cache.upkeep(registry, interval=0.01))
    try:
        await asyncio.wait_for(rounds.wait(), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert touched[0] == {"key_1": T0}  # the use the failed round could not record, recorded next round
    with pytest.raises(Unauthorized):
        cache.lookup(second.key)  # rounds ran, and none reloaded
    await cache.reload()  # what the change feed does on a key change
    assert cache.lookup(second.key).key_id == "key_2"


def test_model_patterns() -> None:
    anything = Principal("k", "n", "so-aaaaaaaa")
    assert anything.allows("smollm2:135m") and anything.allows("openai/gpt-4o")
    some = Principal("k", "n", "so-aaaaaaaa", models=("smollm2:*", "openai/gpt-4o", "qwen?:7b"))
    assert some.allows("smollm2:135m") and some.allows("smollm2:360m-q4")
    assert some.allows("openai/gpt-4o") and not some.allows("openai/gpt-4o-mini")
    assert some.allows("qwen2:7b") and not some.allows("qwen25:7b")
    assert not some.allows("llama3:8b") and not some.allows("SMOLLM2:135m")  # case matters


def test_model_limits_first_match_wins() -> None:
    p = Principal(
        "k",
        "n",
        "so-aaaaaaaa",
        model_limits=(ModelLimit("smollm2:135m", rpm=5), ModelLimit("smollm2:*", rpm=50, tpm=10)),
    )
    assert p.model_limit("smollm2:135m") == ModelLimit("smollm2:135m", rpm=5)
    assert p.model_limit("smollm2:360m") == ModelLimit("smollm2:*", rpm=50, tpm=10)
    assert p.model_limit("llama3:8b") is None


def test_principal_from_record_keeps_limits_and_times() -> None:
    key = generate_key().key
    p = Principal.from_record(
        record(
            key,
            model_limits={"smollm2:*": {"rpm": 7}},
            expires_at=T0,
            budget_usd=1.5,
            budget_period="day",
        )
    )
    assert p.model_limits == (ModelLimit("smollm2:*", rpm=7, tpm=None),)
    assert p.expires_at == T0.timestamp() and p.budget_period == "day" and p.revoked_at is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Authorization": "Bearer so-abc"}, "so-abc"),
        ({"authorization": "bearer   so-abc  "}, "so-abc"),
        ({"x-api-key": "so-xyz"}, "so-xyz"),
        ({"Authorization": "Basic dXNlcjpwdw==", "x-api-key": "so-xyz"}, "so-xyz"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, None),
        ({"Authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_bearer_key(headers: dict[str, str], expected: str | None) -> None:
    assert bearer_key(headers) == expected
