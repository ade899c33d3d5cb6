"""``superollama serve --workers 2``: one port, a primary and a replica, state shared exactly.

Real servers (the bundled SmolLM2 on the real llama.cpp runtime, and the OpenAI stand-in as a connection
where a test needs many fast requests). Which worker answered is in ``x-superollama-worker``; the kernel
spreads new connections over the workers (SO_REUSEPORT), so a test that needs one worker opens
connections until it gets it and then keeps that connection (keep-alive).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.standins import StandIn

MODEL = "smollm2:135m"
ECHO = "echo/echo-1"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
ECHO_CHAT = {"model": ECHO, "messages": [{"role": "user", "content": "abc"}]}
WORKER = "x-superollama-worker"
REDIS_URL = "redis://127.0.0.1:6379/14"  # a database of the shared Redis for these tests only, flushed


@contextlib.contextmanager
def pinned(url: str, worker: int, headers: dict[str, str] | None = None) -> Iterator[httpx.Client]:
    """A client whose one keep-alive connection is served by ``worker``."""
    client = pin(url, worker, headers)
    try:
        yield client
    finally:
        client.close()


def pin(url: str, worker: int, headers: dict[str, str] | None = None) -> httpx.Client:
    for _ in range(400):
        client = httpx.Client(
            base_url=url,
            timeout=120,
            headers=headers,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        if client.get("/health").headers[WORKER] == str(worker):
            return client
        client.close()
    raise AssertionError(f"no connection reached worker {worker} in 400 tries")


def start(home: Path, **env: str) -> ServerProcess:
    server = ServerProcess(home, SUPEROLLAMA_WORKERS="2", **env)
    return server.start(timeout=120)


def server_info(server: ServerProcess) -> dict[str, object]:
    return dict(json.loads((server.home / "server.json").read_text()))


def worker_pids(server: ServerProcess) -> list[int]:
    return [int(p) for p in server_info(server)["workers"]]  # type: ignore[attr-defined]


def agent_pid(server: ServerProcess) -> int:
    return int(server_info(server)["agent"])  # type: ignore[call-overload]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def llama_pids(server: ServerProcess) -> list[int]:
    return [int(i["pid"]) for i in server.instances() if i.get("pid")]  # type: ignore[call-overload]


def connect_stand_in(server: ServerProcess, stand_in: StandIn) -> None:
    done = server.cli("connect", "openai", f"http://127.0.0.1:{stand_in.port}/v1", "--name", "echo")
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start(tmp_path_factory.mktemp("workers"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start a 2-worker server of the test's own (stopped at the end)."""
    servers: list[ServerProcess] = []

    def make(**env: str) -> ServerProcess:
        home = tmp_path / f"home{len(servers)}"
        home.mkdir()
        servers.append(start(home, **env))
        return servers[-1]

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


# -- one port, two workers ---------------------------------------------------------------------------------
def test_both_workers_answer_on_the_one_port(cluster: ServerProcess) -> None:
    seen: Counter[str] = Counter()
    bodies = set()
    for _ in range(40):
        with httpx.Client(timeout=30) as client:  # a new connection each time
            response = client.get(cluster.url + "/v1/models")
        assert response.status_code == 200
        seen[response.headers[WORKER]] += 1
        bodies.add(response.content)
    assert set(seen) == {"0", "1"}, seen
    assert len(bodies) == 1  # the same answer whichever worker gave it
    pids = worker_pids(cluster)
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    children = {p.pid for p in psutil.Process(cluster.pid).children()}
    assert children == {*pids, agent_pid(cluster)}  # the workers and the node agent's process


def test_a_chat_through_the_replica_loads_the_model_in_the_agent_process_and_streams(
    cluster: ServerProcess,
) -> None:
    assert cluster.instances() == []
    with pinned(cluster.url, 1) as replica:
        with replica.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            assert response.status_code == 200, response.read()
            assert response.headers[WORKER] == "1"
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        deltas = [
            json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1] if '"choices"' in e
        ]
        assert len([d for d in deltas if d]) >= 2  # streamed chunk by chunk
        # the Ollama API on the replica too, NDJSON to the final stats object
        with replica.stream("POST", "/api/chat", json={**CHAT, "options": {"num_predict": 4}}) as response:
            assert response.status_code == 200 and response.headers[WORKER] == "1"
            lines = [json.loads(line) for line in response.iter_lines() if line]
        assert lines[-1]["done"] is True and lines[-1]["eval_count"] >= 1
    instances = cluster.instances()
    assert [i["version"] for i in instances] == [MODEL] and instances[0]["state"] == "ready"
    agent = psutil.Process(agent_pid(cluster))
    assert llama_pids(cluster) == [c.pid for c in agent.children()]  # the agent process runs it
    assert psutil.Process(worker_pids(cluster)[0]).children() == []  # not the primary
    with pinned(cluster.url, 0) as first:  # the primary serves the same instance, nothing new loads
        assert first.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert [i["id"] for i in cluster.instances()] == [instances[0]["id"]]
    ps = httpx.get(cluster.url + "/api/ps", timeout=30).json()
    assert [m["name"] for m in ps["models"]] == [MODEL]


def test_admin_changes_reach_every_worker_before_the_call_returns(cluster: ServerProcess) -> None:
    with pinned(cluster.url, 0) as w0, pinned(cluster.url, 1) as w1:
        workers = (w0, w1)

        def listed(name: str) -> list[bool]:
            return [name in {m["id"] for m in w.get("/v1/models").json()["data"]} for w in workers]

        def chat_status(name: str) -> list[int]:
            return [w.post("/v1/chat/completions", json={**CHAT, "model": name}).status_code for w in workers]

        copy = w1.post("/admin/v1/copy", json={"source": MODEL, "destination": "smol-copy"})
        assert copy.status_code == 201, copy.text
        assert listed("smol-copy:latest") == [True, True]
        assert w1.post("/admin/v1/models/smol-copy/disable").status_code == 200
        assert listed("smol-copy:latest") == [False, False]
        assert chat_status("smol-copy") == [404, 404]
        assert w0.post("/admin/v1/models/smol-copy/enable").status_code == 200
        assert listed("smol-copy:latest") == [True, True]
        renamed = w0.post("/admin/v1/rename", json={"source": "smol-copy", "destination": "smol-two"})
        assert renamed.status_code == 200, renamed.text
        assert listed("smol-two:latest") == [True, True] and listed("smol-copy:latest") == [False, False]
        assert w1.delete("/admin/v1/models/smol-two").status_code == 200
        assert listed("smol-two:latest") == [False, False]
        assert chat_status("smol-two") == [404, 404]
        # the Ollama management routes of a replica are the primary's
        assert w1.post("/api/copy", json={"source": MODEL, "destination": "smol-three"}).status_code == 200
        assert listed("smol-three:latest") == [True, True]
        assert w1.request("DELETE", "/api/delete", json={"model": "smol-three"}).status_code == 200
        assert listed("smol-three:latest") == [False, False]


# -- keys and rate limits --------------------------------------------------------------------------------
def test_keys_created_and_revoked_take_effect_on_every_worker(
    fresh: Callable[..., ServerProcess], stand_in: StandIn
) -> None:
    server = fresh(SUPEROLLAMA_BUNDLED_MODEL="false")
    connect_stand_in(server, stand_in)
    with pinned(server.url, 0) as w0, pinned(server.url, 1) as w1:
        created = w1.post("/admin/v1/keys", json={"name": "both"})
        assert created.status_code == 201, created.text
        key, key_id = created.json()["key"], created.json()["id"]
        auth = {"Authorization": f"Bearer {key}"}
        for w in (w0, w1):
            assert w.post("/v1/chat/completions", json=ECHO_CHAT, headers=auth).status_code == 200
            assert w.post("/v1/chat/completions", json=ECHO_CHAT).status_code == 401  # keys are on now
        revoked = w0.post(f"/admin/v1/keys/{key_id}/revoke")
        assert revoked.status_code == 200, revoked.text
        for w in (w0, w1):
            refused = w.post("/v1/chat/completions", json=ECHO_CHAT, headers=auth)
            assert refused.status_code == 401 and "revoked" in refused.text


def _burst(url: str, key: str, per_client: int) -> tuple[Counter[tuple[str, int]], float]:
    """``per_client`` chats from each of four clients, two held on each worker, all at once."""
    headers = {"Authorization": f"Bearer {key}"}
    clients = [pin(url, w, headers) for w in (0, 1, 0, 1)]
    tally: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()

    def run(client: httpx.Client) -> None:
        for _ in range(per_client):
            response = client.post("/v1/chat/completions", json=ECHO_CHAT)
            with lock:
                tally[(response.headers[WORKER], response.status_code)] += 1

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    t0 = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - t0
    for client in clients:
        client.close()
    return tally, elapsed


def _rate_limit_is_shared(server: ServerProcess, stand_in: StandIn) -> None:
    rpm = 20  # a full bucket of 20, then one more every 3 s
    connect_stand_in(server, stand_in)
    created = server.admin("POST", "/admin/v1/keys", json={"name": "limited", "rpm": rpm})
    assert created.status_code == 201, created.text
    tally, elapsed = _burst(server.url, created.json()["key"], 30)
    accepted = sum(n for (_, status), n in tally.items() if status == 200)
    refused = sum(n for (_, status), n in tally.items() if status == 429)
    print(f"accepted {accepted}, refused {refused} in {elapsed:.2f} s: {dict(tally)}")
    assert accepted + refused == 120
    # what one process accepts: the bucket, plus what refilled while the burst lasted (one bucket per
    # worker would accept twice the bucket)
    assert rpm <= accepted <= rpm + int(elapsed * rpm / 60) + 1
    assert all(tally[(w, 200)] + tally[(w, 429)] == 60 and tally[(w, 429)] > 0 for w in ("0", "1")), tally


def test_rate_limit_is_exact_across_workers_in_shared_memory(
    fresh: Callable[..., ServerProcess], stand_in: StandIn
) -> None:
    _rate_limit_is_shared(fresh(SUPEROLLAMA_BUNDLED_MODEL="false"), stand_in)


def test_rate_limit_is_exact_across_workers_in_redis(
    fresh: Callable[..., ServerProcess], stand_in: StandIn
) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.fail("no Redis on 127.0.0.1:6379 (scripts/test starts one)")
    client.flushdb()
    try:
        server = fresh(SUPEROLLAMA_BUNDLED_MODEL="false", SUPEROLLAMA_REDIS_URL=REDIS_URL)
        _rate_limit_is_shared(server, stand_in)
        assert client.keys("*:rpm"), "the buckets are in Redis"
    finally:
        client.flushdb()
        client.close()


# -- usage and metrics -----------------------------------------------------------------------------------
def test_usage_rows_and_the_metrics_counter_count_every_workers_requests(
    fresh: Callable[..., ServerProcess], stand_in: StandIn
) -> None:
    server = fresh(SUPEROLLAMA_BUNDLED_MODEL="false")
    connect_stand_in(server, stand_in)
    served: Counter[str] = Counter()
    for worker in (0, 1, 0, 1):
        with pinned(server.url, worker) as client:
            for _ in range(15):
                response = client.post("/v1/chat/completions", json=ECHO_CHAT)
                assert response.status_code == 200
                served[response.headers[WORKER]] += 1
    assert served == {"0": 30, "1": 30}
    usage = server.admin("GET", "/admin/v1/usage", params={"by": "request"})
    assert usage.status_code == 200, usage.text
    rows = [r for r in usage.json()["rows"] if r["model"] == ECHO]
    assert len(rows) == 60
    assert len({r["request_id"] for r in rows}) == 60
    scrape = httpx.get(server.url + "/metrics", timeout=30)
    assert scrape.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    requests = [s for s in families["superollama_requests"].samples if s.labels["model"] == ECHO]
    assert sum(s.value for s in requests) == 60
    latency = families["superollama_request_duration_seconds"].samples
    count = [s for s in latency if s.name.endswith("_count") and s.labels["model"] == ECHO]
    assert sum(s.value for s in count) == 60


# -- process lifecycle -----------------------------------------------------------------------------------
def _load_through_the_replica(server: ServerProcess) -> None:
    with pinned(server.url, 1) as replica:
        assert replica.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_sigterm_stops_the_master_the_workers_and_the_models(fresh: Callable[..., ServerProcess]) -> None:
    server = fresh()
    _load_through_the_replica(server)
    pids = [server.pid, *worker_pids(server), agent_pid(server), *llama_pids(server)]
    assert len(pids) == 5, pids
    assert server.stop(signal.SIGTERM) == 0
    assert all(gone(pid) for pid in pids), [p for p in pids if not gone(p)]
    assert not (server.home / "server.json").exists()
    assert not any((server.home / "run").iterdir())


def test_a_killed_replica_is_restarted_and_service_continues(fresh: Callable[..., ServerProcess]) -> None:
    server = fresh()
    _load_through_the_replica(server)
    primary, replica = worker_pids(server)
    os.kill(replica, signal.SIGKILL)
    assert wait_until(lambda: worker_pids(server)[1] not in (0, replica), timeout=60)
    assert worker_pids(server)[0] == primary
    for worker in (0, 1):
        with pinned(server.url, worker) as client:
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert "worker 1" in server.log.read_text() and "restarting it" in server.log.read_text()
    assert len(server.instances()) == 1  # the model stayed loaded


def test_sigkill_of_the_master_takes_the_workers_and_the_models_with_it(
    fresh: Callable[..., ServerProcess],
) -> None:
    server = fresh()
    _load_through_the_replica(server)
    workers, agent, models = worker_pids(server), agent_pid(server), llama_pids(server)
    assert len(workers) == 2 and len(models) == 1
    server.stop(signal.SIGKILL)
    assert wait_until(lambda: all(gone(pid) for pid in (*workers, agent, *models)), timeout=30)


def test_a_killed_primary_is_restarted_and_the_model_keeps_running(
    fresh: Callable[..., ServerProcess],
) -> None:
    server = fresh()
    _load_through_the_replica(server)
    primary, replica = worker_pids(server)
    (model,) = llama_pids(server)
    (instance,) = [i["id"] for i in server.instances()]
    os.kill(primary, signal.SIGKILL)
    with pinned(server.url, 1) as client:  # the replica serves from its snapshot meanwhile
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert wait_until(lambda: worker_pids(server)[0] not in (0, primary), timeout=60)
    assert not gone(model)  # the model process belongs to the agent process, not to the primary
    with pinned(server.url, 0) as client:  # the new primary found the running instance: no reload
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert worker_pids(server)[1] == replica  # the replica kept running
    assert [(i["id"], i["pid"]) for i in server.instances()] == [(instance, model)]
