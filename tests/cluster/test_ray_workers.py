"""``serve --cluster --workers 2`` on a real Ray cluster (``conftest.ray_cluster``: alpha and beta).

The gateway workers never import Ray (Ray ends a connected process about a minute after its head is gone):
the agent process is the one Ray driver, and the workers reach it through ``RemoteAgent``, as on one
machine. Checked on the processes themselves (which ones map Ray's ``_raylet`` library), then through what
a user does: a chat placed on a node, ``ps`` with the node, a move between nodes, a join answered with the
head's address. Then the Ray driver is killed (-9): the master starts it again, it re-adopts the instance
by its actor's name (same id, same pid), and the gateways answer throughout, since requests go straight to
the instance's ``node_ip:port``."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.cluster.conftest import RayTestCluster
from tests.cluster.test_cluster_blobs import _sha256
from tests.cluster.test_ray_cluster import _instance_actor_alive
from tests.conftest import smollm2_path
from tests.e2e.conftest import ServerProcess, wait_until

pytestmark = pytest.mark.cluster

MODEL = "smollm2:135m"
HEADER = "X-Superollama-Instance"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ray_cluster: RayTestCluster) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("cluster-workers"),
        SUPEROLLAMA_WORKERS="2",
        SUPEROLLAMA_CLUSTER="1",
        SUPEROLLAMA_CLUSTER_ADDRESS=ray_cluster.address,
        SUPEROLLAMA_CLUSTER_HOST="127.0.0.1",
        **ray_cluster.env,
    ).start(timeout=180)
    try:
        yield srv
    finally:
        for inst in srv.instances():  # detached actors: stopped here, or they outlive the module
            srv.cli("stop", str(inst["version"]))
        srv.stop()


def _info(srv: ServerProcess) -> dict[str, Any]:
    return dict(json.loads((srv.home / "server.json").read_text()))


def _maps_ray(pid: int) -> bool:
    """Whether the process has Ray's core library mapped (it imported ``ray``)."""
    return "_raylet" in Path(f"/proc/{pid}/maps").read_text()


def _chat(srv: ServerProcess) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
    return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=300)


@pytest.mark.timeout(900)  # a load, a move, a driver restart on a small shared CPU
def test_gateway_workers_never_import_ray_and_outlive_their_ray_driver(
    server: ServerProcess, ray_cluster: RayTestCluster
) -> None:
    srv = server
    # pull --node: the files land in beta's own store (verified), before anything runs there
    gguf = smollm2_path()
    digest = _sha256(gguf)
    copy = ray_cluster.stores["beta"] / "blobs" / digest.replace(":", "-")
    copy.unlink(missing_ok=True)  # left by an earlier module's instance on beta (none runs now)
    refused = srv.cli("pull", str(gguf), "--name", "smollm2:nowhere", "--node", "nowhere", "--json")
    assert refused.returncode != 0 and "node 'nowhere' not found" in refused.stderr, refused.stderr
    assert all(m["name"] != "smollm2:nowhere" for m in srv.admin("GET", "/admin/v1/models").json()["models"])
    pulled = srv.cli("pull", str(gguf), "--name", "smollm2:on-beta", "--node", "beta", "--json", timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    on = json.loads(pulled.stdout)["node"]
    assert on["name"] == "beta" and on["own_store"] is True and Path(on["path"]) == copy, on
    assert copy.is_file() and _sha256(copy) == digest

    first = _chat(srv)
    assert first.status_code == 200, first.text
    [inst] = srv.instances()
    assert inst["node"] in {"alpha", "beta"}, inst

    info = _info(srv)
    workers, agent = [int(p) for p in info["workers"]], int(info["agent"])
    assert len(workers) == 2
    assert _maps_ray(agent), "the agent process is the Ray driver"
    assert not any(_maps_ray(pid) for pid in [srv.pid, *workers]), "a gateway process imported Ray"

    listed = srv.cli("ps", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(i["id"], i["node"]) for i in json.loads(listed.stdout)] == [(inst["id"], inst["node"])]
    nodes = {n["name"]: n for n in srv.admin("GET", "/admin/v1/nodes").json()["nodes"]}
    assert nodes["alpha"]["state"] == "ready" and nodes["beta"]["state"] == "ready", nodes
    assert [i["id"] for i in nodes[str(inst["node"])]["instances"]] == [inst["id"]]

    # a machine that joins gets the head's address, which only the agent process knows
    made = srv.cli("nodes", "token", "create", "--name", "workers-test", "--json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    joined = httpx.post(
        srv.url + "/admin/v1/nodes/join",
        json={"name": "delta"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert joined.status_code == 200, joined.text
    assert joined.json()["address"] == ray_cluster.address
    assert srv.cli("nodes", "rm", "delta").returncode == 0

    # a move between nodes, asked of a gateway worker, carried out by the agent process
    target = "beta" if inst["node"] == "alpha" else "alpha"
    moved = srv.cli("mv", MODEL, "--to-node", target, "--json", timeout=600)
    assert moved.returncode == 0, moved.stderr
    result = json.loads(moved.stdout)
    assert result["node"] == target and result["from"]["instance"] == inst["id"], result
    [now] = srv.instances()
    assert now["id"] == result["instance"] and now["node"] == target
    assert wait_until(lambda: not psutil.pid_exists(int(inst["pid"])), timeout=60)

    # kill -9 the Ray driver under a c=4 load: the gateways answer on, the master starts it again,
    # and the new one re-adopts the instance by its actor's name
    served: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
        with httpx.Client(timeout=300) as client:
            while not stop.is_set():
                try:
                    reply = client.post(srv.url + "/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if reply.status_code == 200:
                    served.append(reply.headers.get(HEADER, "?"))
                else:
                    failures.append(f"{reply.status_code} {reply.text[:300]}")

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: len(served) >= 4, timeout=300)
        os.kill(agent, signal.SIGKILL)
        assert wait_until(lambda: int(_info(srv)["agent"]) != agent, timeout=60)
        restarted = int(_info(srv)["agent"])
        assert wait_until(lambda: _maps_ray(restarted), timeout=120)
        during = len(served)
        assert wait_until(lambda: len(served) >= during + 8, timeout=300)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    assert failures == [], failures[:5]
    assert set(served) == {now["id"]}
    assert wait_until(
        lambda: (
            [(i["id"], i["pid"], i["state"]) for i in srv.instances()] == [(now["id"], now["pid"], "ready")]
        ),
        timeout=120,
    ), srv.instances()
    assert _instance_actor_alive(ray_cluster, str(now["id"]))
    assert not any(_maps_ray(pid) for pid in [srv.pid, *[int(p) for p in _info(srv)["workers"]]])
    print(
        f"\ncluster --workers 2: {len(served)} requests at c=4 through a kill -9 of the Ray driver, 0 failed"
    )
