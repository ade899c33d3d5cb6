"""``superollama serve --db URL --redis URL``, as the README's "Many machines" section runs the control
plane: the registry is that Postgres (no SQLite file in the home; the gateways list says ``postgresql``,
and a key made through the server is a row there), and the rate limits count in that Redis (a limited
key's request leaves its state in the Redis database named, and the next one is refused)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis
from tests.databases import postgres_schema_sync, schema_url
from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.postgres

REDIS_URL = "redis://127.0.0.1:6379/10"  # a database of the shared Redis for this test only, flushed


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    with postgres_schema_sync(pg_url, "test_serve_db") as name:
        yield name


async def _key_names(pg_url: str, schema: str) -> list[str]:
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://").split("?", 1)[0])
    try:
        rows = await conn.fetch(f'SELECT name FROM "{schema}".api_keys')
        return [str(r["name"]) for r in rows]
    finally:
        await conn.close()


def test_serve_takes_its_database_and_redis_from_the_command_line(
    tmp_path: Path, pg_url: str, schema: str
) -> None:
    store = redis.Redis.from_url(REDIS_URL)
    store.flushdb()
    srv = ServerProcess(tmp_path)
    srv.args = ["--db", schema_url(pg_url, schema), "--redis", REDIS_URL]
    srv.start(timeout=120)
    try:
        assert srv.admin("GET", "/admin/v1/gateways").json()["dialect"] == "postgresql"
        assert not (tmp_path / "registry.db").exists()
        made = srv.cli("keys", "create", "--name", "limited", "--rpm", "1", "--json")
        assert made.returncode == 0, made.stderr
        assert "limited" in asyncio.run(_key_names(pg_url, schema))
        key = json.loads(made.stdout)["key"]
        reply = httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert reply.status_code == 200, reply.text
        body = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        auth = {"Authorization": f"Bearer {key}"}
        chat = httpx.post(srv.url + "/v1/chat/completions", json=body, headers=auth, timeout=120)
        assert chat.status_code == 200, chat.text
        # the key's budget (1 a minute: its state lives a minute) is in the Redis named on the command line
        assert store.dbsize() > 0
        again = httpx.post(srv.url + "/v1/chat/completions", json=body, headers=auth, timeout=120)
        assert again.status_code == 429, again.text
    finally:
        srv.stop()
        store.flushdb()
