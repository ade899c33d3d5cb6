"""Join tokens in the registry (a SQLite file and a fresh Postgres schema): only the hash is kept, a token
is found by its hash, by id or name, revoked once, and expires by its clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from superollama.errors import Conflict, NotFound
from superollama.registry import JoinTokenRecord, Registry, open_registry
from superollama.registry.schema import join_tokens
from superollama.security import hash_key
from superollama.security.join_tokens import generate_join_token, looks_like_join_token
from superollama.security.keys import looks_like_key

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


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


def _record(token_id: str, name: str, **changes: object) -> tuple[str, JoinTokenRecord]:
    new = generate_join_token()
    return new.key, JoinTokenRecord(id=token_id, name=name, prefix=new.prefix, hash=new.hash, **changes)  # type: ignore[arg-type]


def test_a_join_token_is_not_shaped_like_an_api_key() -> None:
    new = generate_join_token()
    assert looks_like_join_token(new.key) and not looks_like_key(new.key)
    assert new.hash == hash_key(new.key) and new.key.startswith(new.prefix)
    assert new.key not in repr(new)
    assert generate_join_token().key != new.key


async def test_only_the_hash_is_stored_and_found_by_it(registry: Registry) -> None:
    secret, record = _record("jt_1", "rack-a", expires_at=T0 + timedelta(hours=24))
    added = await registry.join_tokens.add(record)
    assert added.created_at == T0 and added.expires_at == T0 + timedelta(hours=24)
    assert (await registry.join_tokens.by_hash(hash_key(secret))) == added
    assert await registry.join_tokens.by_hash(hash_key(secret + "x")) is None
    async with registry.engine.connect() as conn:
        stored = [tuple(r) for r in (await conn.execute(select(join_tokens))).all()]
    assert stored and all(secret not in map(str, row) for row in stored)
    assert (await registry.join_tokens.get("rack-a")).id == "jt_1"
    assert (await registry.join_tokens.get("jt_1")).name == "rack-a"
    with pytest.raises(NotFound):
        await registry.join_tokens.get("nope")
    _, same_name = _record("jt_2", "rack-a")
    with pytest.raises(Conflict):
        await registry.join_tokens.add(same_name)
    assert [t.id for t in await registry.join_tokens.list()] == ["jt_1"]


async def test_revoke_keeps_the_first_time_and_expiry_follows_the_clock(
    registry: Registry, clock: Clock
) -> None:
    _, record = _record("jt_1", "rack-a", expires_at=T0 + timedelta(hours=1))
    await registry.join_tokens.add(record)
    token = await registry.join_tokens.get("jt_1")
    assert token.state(T0) == "active"
    assert token.state(T0 + timedelta(hours=1)) == "expired"

    _, other = _record("jt_2", "rack-b")
    await registry.join_tokens.add(other)
    clock.now = T0 + timedelta(minutes=5)
    revoked = await registry.join_tokens.revoke("rack-b")
    assert revoked.revoked_at == T0 + timedelta(minutes=5) and revoked.state(clock.now) == "revoked"
    clock.now = T0 + timedelta(minutes=9)
    again = await registry.join_tokens.revoke("jt_2")
    assert again.revoked_at == T0 + timedelta(minutes=5)
    assert (await registry.join_tokens.get("jt_1")).revoked_at is None  # the other one is untouched

    await registry.join_tokens.used("jt_1", "gpu-box")
    used = await registry.join_tokens.get("jt_1")
    assert used.last_node == "gpu-box" and used.last_used_at == clock.now
