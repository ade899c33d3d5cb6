"""``serve --cluster`` with one gateway worker outlives a Ray head that stays away.

Ray ends a connected process when its head's control store (the GCS) stays unreachable longer than
``gcs_rpc_server_reconnect_timeout_s`` (60 s by default). With ``--cluster`` the one Ray driver is always the
agent process, whatever the worker count, so what Ray ends is that process: the master starts it again,
it reconnects once the head is back and re-adopts the running instance by its actor's name, while the
gateway process (never a Ray driver) keeps its pid and keeps answering, relaying straight to the
instance's ``node_ip:port``.

A cluster of this module's own (a head and one node, ``alpha``), its GCS on the test Redis under a key
namespace of its own, so that the GCS can really go: it is killed (by its pid, through Ray's own
``Node.kill_gcs_server``), kept away until Ray has ended the driver, then started again on the same port
(``Node.start_gcs_server``), where it reads the cluster's tables back and the raylets reconnect (the
session's ``ray_cluster`` has no Redis: its GCS cannot come back). To keep the test short the server gets
``RAY_gcs_rpc_server_reconnect_timeout_s=10`` (Ray's own setting, read from its environment: the driver
gives up after 10 s instead of 60); the raylets and the instance's actor keep Ray's 60 s."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
from tests.cluster.conftest import HEALTH, RAY_ENV, RayTestCluster
from tests.cluster.test_ray_cluster import _instance_actor_alive
from tests.e2e.conftest import ServerProcess, wait_until

pytestmark = pytest.mark.cluster

MODEL = "smollm2:135m"
HEADER = "X-Superollama-Instance"
REDIS = "redis://127.0.0.1:6379/0"
RECONNECT_TIMEOUT = 10  # seconds (Ray's default: 60)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _drop_store(namespace: str) -> None:
    client = redis.Redis.from_url(REDIS)
    try:
        for key in client.keys(f"RAY{namespace}@*"):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture(scope="module")
def head_on_redis() -> Iterator[RayTestCluster]:
    """A head (its GCS on Redis, at a fixed port) and the node ``alpha``; stopped by PID."""
    tmpdir = tempfile.mkdtemp(prefix="so-rayd-", dir="/tmp")  # Ray's socket paths must stay short
    namespace = f"so-driver-{uuid.uuid4().hex[:12]}"
    store = {"RAY_REDIS_ADDRESS": "127.0.0.1:6379", "RAY_external_storage_namespace": namespace}
    env = {**RAY_ENV, "RAY_TMPDIR": tmpdir}
    saved = {k: os.environ.get(k) for k in (*env, *store)}
    os.environ.update({**env, **store})  # the GCS (and its restart) reads the store from the environment
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "node_ip_address": "127.0.0.1",
            "num_cpus": 0,
            "include_dashboard": False,
            "gcs_server_port": _free_port(),  # a restarted GCS must come back where the raylets look
            "_system_config": HEALTH,
        },
    )
    try:
        cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1, resources={"so_node:alpha": 1})
        cluster.wait_for_nodes()
        yield RayTestCluster(address=cluster.address, tmpdir=tmpdir, env=env, cluster=cluster)
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _drop_store(namespace)
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, head_on_redis: RayTestCluster
) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("cluster-driver"),
        SUPEROLLAMA_WORKERS="1",
        SUPEROLLAMA_CLUSTER="1",
        SUPEROLLAMA_CLUSTER_ADDRESS=head_on_redis.address,
        SUPEROLLAMA_CLUSTER_HOST="127.0.0.1",
        RAY_gcs_rpc_server_reconnect_timeout_s=str(RECONNECT_TIMEOUT),
        **head_on_redis.env,
    )
    for key in ("RAY_REDIS_ADDRESS", "RAY_external_storage_namespace"):  # the head's, not a driver's
        srv.env.pop(key, None)
    srv.start(timeout=180)
    try:
        yield srv
    finally:
        if srv.proc is not None:  # the test stops it itself when it gets that far
            for inst in srv.instances():  # detached actors: stopped here, or they outlive the module
                srv.cli("stop", str(inst["version"]))
            srv.stop()


def _info(srv: ServerProcess) -> dict[str, Any]:
    return dict(json.loads((srv.home / "server.json").read_text()))


def _maps_ray(pid: int) -> bool:
    """Whether the process has Ray's core library mapped (it imported ``ray``)."""
    return "_raylet" in Path(f"/proc/{pid}/maps").read_text()


class _Load:
    """A chat client and a ``/health`` poller, each sequential, recording every failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.served: list[tuple[float, str]] = []  # (when it ended, the instance that answered)
        self.health = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._chat, self._health)]

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=300)

    def _chat(self) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
        with httpx.Client(timeout=300) as client:
            while not self._stop.is_set():
                try:
                    reply = client.post(self.url + "/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append(f"chat: {exc!r}")
                    continue
                if reply.status_code == 200:
                    self.served.append((time.monotonic(), reply.headers.get(HEADER, "?")))
                else:
                    self.failures.append(f"chat: {reply.status_code} {reply.text[:300]}")

    def _health(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.wait(0.2):
                try:
                    reply = client.get(self.url + "/health")
                except httpx.HTTPError as exc:
                    self.failures.append(f"health: {exc!r}")
                    continue
                if reply.status_code == 200:
                    self.health += 1
                else:
                    self.failures.append(f"health: {reply.status_code} {reply.text[:300]}")

    def served_after(self, when: float) -> int:
        return sum(1 for at, _ in self.served if at > when)


@pytest.mark.timeout(900)  # a load and a driver that Ray ends, on a small shared CPU
def test_one_gateway_worker_outlives_a_head_that_stays_away(
    server: ServerProcess, head_on_redis: RayTestCluster
) -> None:
    srv = server
    first = httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4},
        timeout=300,
    )
    assert first.status_code == 200, first.text
    [inst] = srv.instances()
    assert inst["node"] == "alpha", inst

    # one gateway worker, and the agent process beside it is the only Ray driver
    info = _info(srv)
    [worker], driver = [int(p) for p in info["workers"]], int(info["agent"])
    assert _maps_ray(driver), "the agent process is the Ray driver"
    assert not any(_maps_ray(pid) for pid in (srv.pid, worker)), "a gateway process imported Ray"

    head = head_on_redis.cluster.head_node
    with _Load(srv.url) as load:
        assert wait_until(lambda: len(load.served) >= 2, timeout=300)
        head.kill_gcs_server()
        stopped = time.monotonic()
        try:
            # Ray ends its driver (the agent process) once the head has been away RECONNECT_TIMEOUT s;
            # the gateway answers on, relaying to the instance it knows
            assert wait_until(lambda: not psutil.pid_exists(driver), timeout=RECONNECT_TIMEOUT + 40), (
                "Ray did not end its driver"
            )
            ended = time.monotonic()
            assert wait_until(lambda: load.served_after(ended) >= 1, timeout=30)
        finally:
            head.start_gcs_server()
            back = time.monotonic()
        # the master started the agent process again; it reconnects and is serving once it re-adopted
        assert wait_until(lambda: int(_info(srv)["agent"]) not in (0, driver), timeout=300), (
            srv.log.read_text()[-3000:]
        )
        serving = time.monotonic()
        restarted = int(_info(srv)["agent"])
        assert _maps_ray(restarted)
        assert wait_until(lambda: load.served_after(serving) >= 4, timeout=300)
    failures = load.failures
    assert failures == [], failures[:5]
    assert {instance for _, instance in load.served} == {inst["id"]}

    # the same instance, re-adopted by name (its actor alive, no second one), answering through the gateway
    assert [(i["id"], i["pid"], i["state"]) for i in srv.instances()] == [(inst["id"], inst["pid"], "ready")]
    assert _instance_actor_alive(head_on_redis, str(inst["id"]))
    assert f"re-adopted {inst['id']} ({MODEL}) on node alpha by its actor's name" in srv.log.read_text()
    assert srv.log.read_text().count("placing inst-") == 1  # nothing placed again
    nodes = {n["name"]: n for n in srv.admin("GET", "/admin/v1/nodes").json()["nodes"]}
    assert [i["id"] for i in nodes["alpha"]["instances"]] == [inst["id"]], nodes
    assert nodes["alpha"]["state"] == "ready", nodes
    # the gateway processes kept their pids and never imported Ray
    assert _info(srv)["workers"] == [worker] and srv.proc is not None and srv.proc.poll() is None
    assert not any(_maps_ray(pid) for pid in (srv.pid, worker))
    print(
        f"\ncluster --workers 1: head away {back - stopped:.1f} s, the agent process (Ray driver) ended "
        f"{ended - stopped:.1f} s after the head went and was serving again {serving - back:.1f} s after "
        f"it came back; {len(load.served)} chats ({load.served_after(stopped) - load.served_after(back)} "
        f"while the head was away) and {load.health} health checks, {len(failures)} failed"
    )

    # the one worker and the agent process stop on SIGTERM: the master exits 0, nothing left running
    assert srv.cli("stop", MODEL).returncode == 0
    assert srv.stop() == 0
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in (worker, restarted)), timeout=30)
