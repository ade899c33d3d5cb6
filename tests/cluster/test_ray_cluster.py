"""``serve --cluster`` on a real Ray cluster (``conftest.ray_cluster``: nodes alpha and beta on loopback).

The control plane is a real ``superollama serve`` process, the Ray driver; SmolLM2 runs as a llama.cpp
child of a detached instance actor on the node placement chose; the gateway relays to that child's
``node_ip:port``. One server home for the module: each test leaves the cluster as it found it (no
instance running, no node cordoned)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.cluster.conftest import RayTestCluster
from tests.e2e.conftest import ServerProcess, wait_until

pytestmark = pytest.mark.cluster

MODEL = "smollm2:135m"
NAMESPACE = "superollama"


def _server(home: Path, cluster: RayTestCluster) -> ServerProcess:
    return ServerProcess(
        home,
        SUPEROLLAMA_CLUSTER="1",
        SUPEROLLAMA_CLUSTER_ADDRESS=cluster.address,
        SUPEROLLAMA_CLUSTER_HOST="127.0.0.1",
        **cluster.env,
    ).start(timeout=180)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-home")


@pytest.fixture
def server(home: Path, ray_cluster: RayTestCluster) -> Iterator[ServerProcess]:
    srv = _server(home, ray_cluster)
    try:
        yield srv
    finally:
        for inst in srv.instances():  # instances are detached: stop them, or they outlive the test
            srv.cli("stop", str(inst["version"]))
        for node in ("alpha", "beta"):
            srv.admin("POST", f"/admin/v1/nodes/{node}/uncordon")
        srv.stop()


def _chat(srv: ServerProcess, text: str = "Say hi") -> dict[str, Any]:
    reply = httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8},
        timeout=180,
    )
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _instance_actor_alive(cluster: RayTestCluster, name: str) -> bool:
    """Asked from a driver of its own (the test process never joins the cluster itself)."""
    code = (
        "import ray, sys\n"
        f"ray.init(address={cluster.address!r}, namespace={NAMESPACE!r}, log_to_driver=False,"
        " _node_ip_address='127.0.0.1')\n"
        "try:\n"
        f"    ray.get_actor({name!r}); print('alive')\n"
        "except ValueError:\n"
        "    print('gone')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip().endswith("alive")


def _actor_of(pid: int) -> psutil.Process:
    """The Ray worker process a llama.cpp child belongs to (its parent)."""
    parent = psutil.Process(pid).parent()
    assert parent is not None
    return parent


def test_nodes_come_from_the_cluster_with_their_inventory(server: ServerProcess) -> None:
    nodes = {n["name"]: n for n in server.admin("GET", "/admin/v1/nodes").json()["nodes"]}
    assert {"alpha", "beta"} <= nodes.keys()
    for name in ("alpha", "beta"):
        node = nodes[name]
        assert node["state"] == "ready"
        assert node["address"] == "127.0.0.1"
        assert "llamacpp" in node["inventory"]["runtimes"]
        assert node["inventory"]["memory_bytes"] > 0
        assert node["inventory"]["usage"]["memory_available"] > 0
    assert nodes["beta"]["inventory"]["ray_gpus"] == 2  # Ray's count; no GPU memory behind it here
    listed = server.cli("nodes", "ls")
    assert listed.returncode == 0, listed.stderr
    assert "alpha" in listed.stdout and "beta" in listed.stdout


def test_placed_where_placement_says_served_re_adopted_and_replaced(
    server: ServerProcess, home: Path, ray_cluster: RayTestCluster
) -> None:
    # beta cordoned: placement has one choice left, alpha
    cordoned = server.cli("nodes", "cordon", "beta")
    assert cordoned.returncode == 0, cordoned.stderr
    assert "node beta: cordoned" in cordoned.stdout
    assert _chat(server)["choices"][0]["message"]["content"]
    [inst] = server.instances()
    assert inst["node"] == "alpha"
    assert str(inst["endpoint"]).startswith("http://127.0.0.1:")
    pid = int(inst["pid"])  # type: ignore[call-overload]
    actor = _actor_of(pid)
    assert "InstanceActor" in " ".join(actor.cmdline()), actor.cmdline()
    assert _instance_actor_alive(ray_cluster, str(inst["id"]))

    # the control plane restarts: the instance keeps running and is re-adopted by name, not reloaded
    assert server.stop() == 0
    assert psutil.pid_exists(pid)
    again = _server(home, ray_cluster)
    server.proc, server.url = again.proc, again.url
    [same] = server.instances()
    assert (same["id"], same["pid"], same["node"]) == (inst["id"], pid, "alpha")
    assert _chat(server)["choices"][0]["message"]["content"]
    assert len(server.instances()) == 1

    # the model process dies: the next request gets a new instance, placed again (alpha), old actor gone
    psutil.Process(pid).send_signal(signal.SIGKILL)
    assert wait_until(lambda: not psutil.pid_exists(pid), timeout=10)
    assert _chat(server)["choices"][0]["message"]["content"]
    [fresh] = server.instances()
    assert fresh["id"] != inst["id"] and fresh["node"] == "alpha"
    assert wait_until(lambda: not psutil.pid_exists(actor.pid), timeout=30)  # its actor went with it

    # drain alpha: its instance stops, model process and actor; alpha takes nothing new
    fresh_actor = _actor_of(int(fresh["pid"]))  # type: ignore[call-overload]
    drained = server.admin("POST", "/admin/v1/nodes/alpha/drain").json()
    assert drained["stopped"] == [fresh["id"]]
    assert drained["node"]["state"] == "draining"
    assert server.instances() == []
    assert not psutil.pid_exists(int(fresh["pid"]))  # type: ignore[call-overload]
    assert wait_until(lambda: not psutil.pid_exists(fresh_actor.pid), timeout=30)
    refused = server.admin("DELETE", "/admin/v1/nodes/nowhere")
    assert refused.status_code == 404


def test_nothing_fits_names_the_best_candidate(server: ServerProcess) -> None:
    server.cli("nodes", "cordon", "alpha")
    server.cli("nodes", "cordon", "beta")
    reply = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
        timeout=60,
    )
    assert reply.status_code == 503, reply.text
    message = reply.json()["error"]["message"]
    assert "alpha is cordoned" in message and "beta is cordoned" in message


def test_a_dead_nodes_instance_is_served_again_on_another_node(
    server: ServerProcess, ray_cluster: RayTestCluster
) -> None:
    gamma = ray_cluster.cluster.add_node(
        node_ip_address="127.0.0.1", num_cpus=1, resources={"so_node:gamma": 1}
    )
    try:
        server.cli("nodes", "cordon", "alpha")
        server.cli("nodes", "cordon", "beta")
        assert _chat(server)["choices"][0]["message"]["content"]  # placement's only choice: gamma
        [inst] = server.instances()
        assert inst["node"] == "gamma"
        pid = int(inst["pid"])  # type: ignore[call-overload]

        # gamma's raylet and workers are killed (by PID): Ray sees the node dead (health check 500 ms x 3),
        # the instance's actor with it; the instance leaves routing and its model process is gone
        ray_cluster.cluster.remove_node(gamma, allow_graceful=False)
        gamma = None
        assert wait_until(lambda: server.instances() == [], timeout=60), server.instances()
        assert wait_until(lambda: not psutil.pid_exists(pid), timeout=30)
        server.cli("nodes", "uncordon", "alpha")
        assert _chat(server)["choices"][0]["message"]["content"]
        [again] = server.instances()
        assert again["node"] == "alpha" and again["id"] != inst["id"]
        assert wait_until(
            lambda: (
                {n["name"]: n["state"] for n in server.admin("GET", "/admin/v1/nodes").json()["nodes"]}.get(
                    "gamma"
                )
                == "down"
            ),
            timeout=30,
        )
    finally:
        if gamma is not None:
            ray_cluster.cluster.remove_node(gamma)
