"""Several gateways on one registry: two real ``superollama serve`` processes, separate homes, one Postgres
schema and one Redis database. A change made through one is seen through the other (the change feed:
a generation bumped with the change + Postgres NOTIFY); a revoked key is refused by both; a gateway that
missed pings (stopped, or its connection cut) catches up by itself; the reconciler leader is one of them,
and when it is killed the other takes the lock and ends the dead leader's job.

Each propagation is waited for with a deadline (generous: the machine is shared) and its observed delay
printed; ``bench/gateway_propagation.py`` measures the delay over 100 changes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
from tests.databases import postgres_schema_sync, schema_url
from tests.e2e.conftest import ServerProcess
from tests.e2e.standins import StandIn
from tests.failing_io import SilentServer
from tests.waiting import wait_until_sync

pytestmark = pytest.mark.postgres

REDIS_URL = "redis://127.0.0.1:6379/12"  # a database of the shared Redis for these tests only, flushed
DEADLINE = 5.0  # seconds: the feed brings a change in milliseconds; this only bounds a failing test
BUNDLED = "smollm2:135m"


def _plain_pg(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://").split("?", 1)[0]


@pytest.fixture
def registry_url(pg_url: str) -> Iterator[str]:
    """A fresh schema of the test Postgres, dropped at the end."""
    with postgres_schema_sync(pg_url, "test_gateways") as schema:
        yield schema_url(pg_url, schema)


class Pair:
    """Gateways ``a`` and ``b``: separate homes sharing the registry, Redis and the secret key."""

    def __init__(self, root: Path, registry_url: str, workers: int = 1, **env: str) -> None:
        from cryptography.fernet import Fernet

        self.workers = workers
        secret = Fernet.generate_key()
        self.servers: dict[str, ServerProcess] = {}
        for name in ("a", "b"):
            home = root / f"home-{name}"
            home.mkdir()
            key_file = home / "secret.key"
            key_file.write_bytes(secret)  # the gateways must open each other's sealed credentials
            key_file.chmod(0o600)
            self.servers[name] = ServerProcess(
                home,
                SUPEROLLAMA_DATABASE_URL=registry_url,
                SUPEROLLAMA_REDIS_URL=REDIS_URL,
                SUPEROLLAMA_GATEWAY_NAME=f"gw-{name}",
                SUPEROLLAMA_BUNDLED_MODEL="true" if name == "a" else "false",
                SUPEROLLAMA_LEADER_RETRY="0.5",
                SUPEROLLAMA_WORKERS=str(workers),
                **env,
            )
        self.headers: dict[str, str] = {}

    @property
    def a(self) -> ServerProcess:
        return self.servers["a"]

    @property
    def b(self) -> ServerProcess:
        return self.servers["b"]

    def call(self, srv: ServerProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.request(method, srv.url + path, headers=headers, timeout=60, **kwargs)

    def every_worker(self, srv: ServerProcess, path: str, key: dict[str, str] | None) -> list[httpx.Response]:
        """The latest answer of each worker of ``srv`` to ``GET path`` (new connections until every worker
        has answered one: the kernel spreads them over the workers)."""
        latest: dict[str, httpx.Response] = {}
        for _ in range(60):
            response = self.call(srv, "GET", path, headers=key or {})
            latest[response.headers.get("x-superollama-worker", "0")] = response
            if len(latest) == self.workers:
                return list(latest.values())
        raise AssertionError(f"not every worker of {srv.url} answered in 60 connections: {sorted(latest)}")

    def models(self, srv: ServerProcess, key: dict[str, str] | None = None) -> set[str]:
        """The models every worker of ``srv`` lists."""
        sets = []
        for response in self.every_worker(srv, "/v1/models", key):
            assert response.status_code == 200, response.text
            sets.append({m["id"] for m in response.json()["data"]})
        return set.intersection(*sets)

    def listed_nowhere(self, srv: ServerProcess, match: Callable[[str], bool]) -> bool:
        """No worker of ``srv`` lists a model that ``match``es."""
        responses = self.every_worker(srv, "/v1/models", None)
        return not any(match(m["id"]) for r in responses for m in r.json()["data"])

    def refused(self, srv: ServerProcess, key: dict[str, str] | None) -> bool:
        """Every worker of ``srv`` answers 401 to ``key`` (None: no key)."""
        return all(r.status_code == 401 for r in self.every_worker(srv, "/v1/models", key))

    def stop(self) -> None:
        for srv in self.servers.values():
            srv.stop()


@pytest.fixture(params=[1, 2], ids=["workers=1", "workers=2"])
def pair(request: pytest.FixtureRequest, tmp_path: Path, registry_url: str) -> Iterator[Pair]:
    """Two gateways of ``serve --workers N`` each (with 2, a replica worker answers about half the calls:
    the change reaches it through its primary)."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    gateways = Pair(tmp_path, registry_url, workers=request.param)
    try:
        gateways.a.start(timeout=120)  # first: it registers the bundled model and takes the leader lock
        gateways.b.start(timeout=120)
        yield gateways
    finally:
        gateways.stop()


def seen_within(check: Callable[[], object], what: str) -> float:
    """Seconds until ``check()`` holds (fails the test after ``DEADLINE``)."""
    started = time.monotonic()
    wait_until_sync(check, timeout=DEADLINE, interval=0.005, what=what)
    return time.monotonic() - started


def test_every_change_through_one_gateway_is_seen_through_the_other(
    pair: Pair, smollm2_gguf: Path, stand_in: StandIn
) -> None:
    a, b = pair.a, pair.b
    delays: dict[str, float] = {}
    assert BUNDLED in pair.models(a) and BUNDLED in pair.models(b)
    assert a.admin("GET", "/health").headers["x-superollama-gateway"] == "gw-a"
    assert b.admin("GET", "/health").headers["x-superollama-gateway"] == "gw-b"

    # versions: cp, disable, enable, mv, rm (the bundled model's files are in a's home only: the catalog
    # and the routing snapshot are what every gateway shares)
    r = pair.call(a, "POST", "/admin/v1/copy", json={"source": BUNDLED, "destination": "feed:copy"})
    assert r.status_code == 201, r.text
    delays["cp"] = seen_within(lambda: "feed:copy" in pair.models(b), "the copy listed by b")
    assert pair.call(a, "POST", "/admin/v1/models/feed:copy/disable").status_code == 200
    delays["disable"] = seen_within(
        lambda: pair.listed_nowhere(b, lambda m: m == "feed:copy"), "b to drop a disabled model"
    )
    chat = {"model": "feed:copy", "messages": [{"role": "user", "content": "hi"}]}
    refused = pair.call(b, "POST", "/v1/chat/completions", json=chat)
    assert refused.status_code in (403, 404), refused.text  # disabled on b too, not just unlisted
    assert "disabled" in refused.json()["error"]["message"]
    assert pair.call(b, "POST", "/admin/v1/models/feed:copy/enable").status_code == 200  # through b now
    delays["enable (b → a)"] = seen_within(lambda: "feed:copy" in pair.models(a), "a to list it again")
    r = pair.call(a, "POST", "/admin/v1/rename", json={"source": "feed:copy", "destination": "feed:moved"})
    assert r.status_code == 200, r.text
    delays["mv"] = seen_within(
        lambda: "feed:moved" in pair.models(b) and pair.listed_nowhere(b, lambda m: m == "feed:copy"),
        "b to see the rename",
    )
    assert pair.call(a, "DELETE", "/admin/v1/models/feed:moved").status_code in (200, 204)
    delays["rm"] = seen_within(
        lambda: pair.listed_nowhere(b, lambda m: m == "feed:moved"), "b to drop the removed model"
    )

    # pull of a small local file
    pull = {"source": smollm2_gguf.as_uri(), "name": "feed:pulled", "stream": False}
    r = pair.call(a, "POST", "/admin/v1/pull", json=pull)
    assert r.status_code == 200, r.text
    delays["pull"] = seen_within(lambda: "feed:pulled" in pair.models(b), "b to list the pulled model")

    # deployments: deploy through a (its target starts there first), then remove
    r = pair.call(a, "PUT", "/admin/v1/deployments/feed-chat", json={"targets": ["feed:pulled=100"]})
    assert r.status_code == 200, r.text
    delays["deploy"] = seen_within(lambda: "feed-chat" in pair.models(b), "b to list the deployment")
    assert pair.call(a, "DELETE", "/admin/v1/deployments/feed-chat").status_code in (200, 204)
    delays["deployment rm"] = seen_within(
        lambda: pair.listed_nowhere(b, lambda m: m == "feed-chat"), "b to drop the deployment"
    )

    # connections: add (with an API key: b must open the sealed credential to send), then remove
    url = f"http://127.0.0.1:{stand_in.port}"
    body = {"kind": "openai", "url": url, "name": "echo", "api_key": "sk-feed-test"}
    assert pair.call(a, "POST", "/admin/v1/connections", json=body).status_code == 201
    delays["connection add"] = seen_within(
        lambda: any(m.startswith("echo/") for m in pair.models(b)), "b to list the connection's models"
    )
    model = next(m for m in pair.models(b) if m.startswith("echo/"))
    stand_in.auth.clear()
    answer = pair.call(b, "POST", "/v1/chat/completions", json={**chat, "model": model})
    assert answer.status_code == 200, answer.text
    assert stand_in.auth == ["Bearer sk-feed-test"]  # b opened the credential a sealed
    assert pair.call(a, "DELETE", "/admin/v1/connections/echo").status_code in (200, 204)
    delays["connection rm"] = seen_within(
        lambda: pair.listed_nowhere(b, lambda m: m.startswith("echo/")), "b to drop the connection"
    )

    # keys: the first admin key turns authentication on in both; a user key works in b; revoked: refused
    r = pair.call(a, "POST", "/admin/v1/keys", json={"name": "admin", "role": "admin"})
    assert r.status_code == 201, r.text
    admin_key = r.json()["key"]
    delays["key create (auth on)"] = seen_within(lambda: pair.refused(b, None), "b to require a key")
    pair.headers = {"Authorization": f"Bearer {admin_key}"}
    r = pair.call(b, "POST", "/admin/v1/keys", json={"name": "user"})  # b accepts a's admin key
    assert r.status_code == 201, r.text
    user = {"Authorization": f"Bearer {r.json()['key']}"}
    delays["key create (b → a)"] = seen_within(
        lambda: all(r.status_code == 200 for r in pair.every_worker(a, "/v1/models", user)),
        "a to accept the new key",
    )
    assert pair.call(a, "POST", f"/admin/v1/keys/{r.json()['id']}/revoke").status_code == 200
    delays["key revoke"] = seen_within(
        lambda: pair.refused(a, user) and pair.refused(b, user),
        "both gateways to refuse the revoked key",
    )
    refusal = pair.call(b, "GET", "/v1/models", headers=user).json()
    assert "revoked" in refusal["error"]["message"]

    status = pair.call(b, "GET", "/admin/v1/gateways").json()
    assert {g["id"] for g in status["gateways"] if g["alive"]} == {"gw-a", "gw-b"}
    assert status["leader"] == "gw-a"
    wait_until_sync(
        lambda: all(
            g["generation"] == status["generation"]
            for g in pair.call(a, "GET", "/admin/v1/gateways").json()["gateways"]
        ),
        timeout=DEADLINE,
        what="both gateways at the registry's generation",
    )
    shown = b.cli("--api-key", admin_key, "status")
    assert shown.returncode == 0, shown.stderr
    assert "answered by gw-b; leader gw-a" in shown.stdout
    assert shown.stdout.count("alive") == 2 and "gw-a" in shown.stdout and "leader" in shown.stdout
    print("\npropagation delays (s):", {k: round(v, 3) for k, v in delays.items()})


def test_a_gateway_that_missed_changes_catches_up(pair: Pair, pg_url: str, registry_url: str) -> None:
    a, b = pair.a, pair.b
    # stopped: changes happen meanwhile
    b.stop()
    copy = {"source": BUNDLED, "destination": "late:1"}
    assert pair.call(a, "POST", "/admin/v1/copy", json=copy).is_success
    reader = pair.call(a, "POST", "/admin/v1/keys", json={"name": "reader"}).json()
    data = {"Authorization": f"Bearer {reader['key']}"}  # the data plane wants a key from now on
    r = pair.call(a, "POST", "/admin/v1/keys", json={"name": "user"})
    key = {"Authorization": f"Bearer {r.json()['key']}"}
    assert pair.call(a, "POST", f"/admin/v1/keys/{r.json()['id']}/revoke").status_code == 200
    b.start(timeout=120)
    assert "late:1" in pair.models(b, data)
    assert pair.refused(b, key)
    assert pair.call(b, "GET", "/admin/v1/gateways").json()["gateways"]  # listed again

    # its LISTEN connection cut (a network blip): the change made while it reconnects arrives anyway
    schema = registry_url.rsplit("schema=", 1)[1]

    async def cut() -> int:
        conn = await asyncpg.connect(_plain_pg(pg_url))
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    f"superollama-control {schema}",
                )
            )
        finally:
            await conn.close()

    assert asyncio.run(cut()) >= 4  # the feed and leader sessions of both gateways
    copy = {"source": BUNDLED, "destination": "late:2"}
    assert pair.call(a, "POST", "/admin/v1/copy", json=copy).is_success
    delay = seen_within(lambda: "late:2" in pair.models(b, data), "b to catch up after its session was cut")
    print(f"\ncaught up {delay:.3f} s after a change made while its session was cut")
    wait_until_sync(
        lambda: pair.call(b, "GET", "/admin/v1/gateways").json()["leader"] is not None,
        timeout=DEADLINE,
        what="a leader again after every session was cut",
    )


def test_the_leader_killed_during_a_pull_hands_over_and_its_job_ends(
    tmp_path: Path, registry_url: str, stalling_upstream: SilentServer
) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
    slow = {"SUPEROLLAMA_PULL_STALL_TIMEOUT": "600", "SUPEROLLAMA_PULL_READ_TIMEOUT": "600"}
    pair = Pair(tmp_path, registry_url, **slow)
    try:
        pair.a.start(timeout=120)
        pair.b.start(timeout=120)
        a, b = pair.a, pair.b
        assert pair.call(b, "GET", "/admin/v1/gateways").json()["leader"] == "gw-a"
        source = f"{stalling_upstream.url}/big-model.gguf"
        pull = {"source": source, "name": "slow:1", "background": True}
        r = pair.call(a, "POST", "/admin/v1/pull", json=pull)
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        wait_until_sync(lambda: stalling_upstream.accepted > 0, timeout=DEADLINE, what="the pull to start")
        assert pair.call(b, "GET", f"/admin/v1/jobs/{job}").json()["state"] == "running"

        os.kill(a.pid, signal.SIGKILL)
        killed = time.monotonic()
        a.stop()
        wait_until_sync(
            lambda: pair.call(b, "GET", "/admin/v1/gateways").json()["leader"] == "gw-b",
            timeout=DEADLINE,
            what="b to take the leader lock",
        )
        handover = time.monotonic() - killed
        ended = wait_until_sync(
            lambda: (j := pair.call(b, "GET", f"/admin/v1/jobs/{job}").json())["state"] != "running" and j,
            timeout=DEADLINE,
            what="the dead leader's job to end",
        )
        assert ended["state"] == "failed"
        assert "gw-a" in ended["error"] and "stopped" in ended["error"]
        gateways = {g["id"]: g for g in pair.call(b, "GET", "/admin/v1/gateways").json()["gateways"]}
        assert not gateways["gw-a"]["alive"] and gateways["gw-b"]["leader"]
        shown = b.cli("status")
        assert shown.returncode == 0, shown.stderr
        assert "leader gw-b" in shown.stdout and "dead" in shown.stdout
        print(f"\nleader hand-over {handover:.3f} s after kill -9 (lock retry 0.5 s)")
    finally:
        pair.stop()


def test_an_instance_stops_when_its_version_is_disabled_through_another_gateway(
    tmp_path: Path, registry_url: str, smollm2_gguf: Path
) -> None:
    """The files are in b's home (b pulled them) and b runs the instance; a disables the version: b's
    instance leaves routing and stops (after its requests in flight), without anyone calling b."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    pair = Pair(tmp_path, registry_url)
    try:
        pair.a.start(timeout=120)
        pair.b.start(timeout=120)
        a, b = pair.a, pair.b
        pull = {"source": smollm2_gguf.as_uri(), "name": "here:b", "stream": False}
        assert pair.call(b, "POST", "/admin/v1/pull", json=pull).status_code == 200
        chat = {"model": "here:b", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
        answer = pair.call(b, "POST", "/v1/chat/completions", json=chat)
        assert answer.status_code == 200, answer.text
        assert [i["version"] for i in b.instances()] == ["here:b"]
        assert pair.call(a, "POST", "/admin/v1/models/here:b/disable").status_code == 200
        wait_until_sync(lambda: not b.instances(), timeout=30, what="b's instance to stop")

        def stops() -> list[dict[str, Any]]:
            events = pair.call(b, "GET", "/admin/v1/events", params={"target": "here:b"}).json()["events"]
            return [e for e in events if e["action"] == "instance.stop"]

        stop = wait_until_sync(stops, timeout=DEADLINE, what="the stop recorded")[0]
        assert stop["detail"]["reason"] == "disabled", stop
    finally:
        pair.stop()
