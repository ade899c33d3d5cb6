"""Replicas over nodes and moves between nodes on a real Ray cluster (``conftest.ray_cluster``: alpha, beta).

One ``serve --cluster`` for the module, placing by ``spread`` (``SUPEROLLAMA_PLACEMENT_POLICY``), its drain
bound long enough for a stream to finish on an instance that leaves. SmolLM2 at 4096 tokens over 4 slots.
Each test leaves no instance running and no node cordoned. The numbers measured (move time, requests
served during the move) are printed (``pytest -s`` shows them)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest
from tests.cluster.conftest import RayTestCluster
from tests.cluster.test_ray_cluster import _instance_actor_alive
from tests.e2e.conftest import ServerProcess, wait_until

pytestmark = pytest.mark.cluster

MODEL = "smollm2:135m"
HEADER = "X-Superollama-Instance"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ray_cluster: RayTestCluster) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("cluster-replicas"),
        SUPEROLLAMA_CLUSTER="1",
        SUPEROLLAMA_CLUSTER_ADDRESS=ray_cluster.address,
        SUPEROLLAMA_CLUSTER_HOST="127.0.0.1",
        SUPEROLLAMA_PLACEMENT_POLICY="spread",
        SUPEROLLAMA_DRAIN_TIMEOUT="600",
        **ray_cluster.env,
    ).start(timeout=180)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def clean(server: ServerProcess) -> Iterator[ServerProcess]:
    try:
        yield server
    finally:
        for inst in server.instances():  # detached actors: stopped here, or they outlive the test
            server.cli("stop", str(inst["version"]))
        for node in ("alpha", "beta"):
            server.admin("POST", f"/admin/v1/nodes/{node}/uncordon")


@dataclass
class Load:
    """Plain chat requests from ``workers`` threads until stopped: which instance answered each, and every
    failure (status and body)."""

    url: str
    model: str
    workers: int = 4
    served: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    failed_sent: list[float] = field(default_factory=list)  # when each failed request was sent (monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=300)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.served.values()) + len(self.failures)

    def _run(self) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
        with httpx.Client(timeout=300) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    reply = client.post(self.url + "/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(repr(exc))
                        self.failed_sent.append(sent)
                    continue
                with self._lock:
                    if reply.status_code == 200 and reply.json()["choices"]:
                        inst = reply.headers.get(HEADER, "?")
                        self.served[inst] = self.served.get(inst, 0) + 1
                    else:
                        self.failures.append(f"{reply.status_code} {reply.text[:300]}")
                        self.failed_sent.append(sent)


def _ready(srv: ServerProcess) -> list[dict[str, Any]]:
    return [i for i in srv.instances() if i["state"] == "ready"]


@pytest.mark.timeout(900)  # two loads and a scale-down under load on a small shared CPU
def test_replicas_spread_over_nodes_serve_and_scale_down_without_a_failure(clean: ServerProcess) -> None:
    srv = clean
    deployed = srv.cli("deploy", "chat", "--target", f"{MODEL}=100", "--replicas", "2")
    assert deployed.returncode == 0, deployed.stderr
    first = httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4},
        timeout=300,
    )
    assert first.status_code == 200, first.text
    assert wait_until(lambda: len(_ready(srv)) == 2, timeout=300), srv.instances()
    both = _ready(srv)
    assert {i["node"] for i in both} == {"alpha", "beta"}, both  # spread: one replica per node
    listed = srv.cli("ps", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {(i["id"], i["node"]) for i in json.loads(listed.stdout)} == {(i["id"], i["node"]) for i in both}

    load = Load(srv.url, "chat").start()
    try:
        # both instances get traffic (4 in flight, the least loaded instance first)
        assert wait_until(lambda: {i["id"] for i in both} <= load.served.keys(), timeout=300), load.served
        scaled = srv.cli("scale", "chat", MODEL, "1", "--json")
        assert scaled.returncode == 0, scaled.stderr
        [left] = _ready(srv)
        before = load.total
        assert wait_until(lambda: load.total >= before + 8, timeout=300)  # served on, by the one left
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert len(srv.instances()) == 1 and left["id"] in {i["id"] for i in both}
    gone = next(i for i in both if i["id"] != left["id"])
    assert wait_until(lambda: not psutil.pid_exists(int(gone["pid"])), timeout=60)
    nodes = "+".join(sorted(str(i["node"]) for i in both))
    print(f"\nreplicas: {load.total} requests at c=4 over {nodes}, then scaled to 1; 0 failed; {load.served}")
    assert srv.admin("DELETE", "/admin/v1/deployments/chat").status_code == 200


def _stream_tokens(srv: ServerProcess) -> int:
    """Tokens for a stream that outlasts a move's new instance start on this machine: about 10 s at the
    speed one 64-token answer shows (a fast machine would otherwise end a fixed-length stream before the
    old instance drains), within 300 and what a slot holds (4096 tokens over 4 slots)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count to one hundred."}],
        "max_tokens": 64,
        "ignore_eos": True,
    }
    started = time.monotonic()
    reply = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    per_second = reply.json()["usage"]["completion_tokens"] / (time.monotonic() - started)
    return max(300, min(900, int(per_second * 10)))


def _stream(srv: ServerProcess, out: dict[str, Any]) -> None:
    """A long streamed completion: its instance, its chunks and whether it ended with ``[DONE]``."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        "max_tokens": out["tokens"],
        "ignore_eos": True,
        "stream": True,
    }
    chunks, done = 0, False
    try:
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=600) as reply:
            out["status"], out["instance"] = reply.status_code, reply.headers.get(HEADER)
            out["started"].set()
            for line in reply.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    json.loads(line[6:])
                    chunks += 1
                    out["chunks"] = chunks
    except httpx.HTTPError as exc:
        out["error"] = repr(exc)
    finally:
        out["done"], out["chunks"] = done, chunks
        out["started"].set()
        out["ended"].set()


@pytest.mark.timeout(1500)  # a c=8 load, a move and a long stream under load on a small shared CPU
def test_mv_to_node_moves_the_instance_with_no_request_failing(
    clean: ServerProcess, ray_cluster: RayTestCluster
) -> None:
    srv = clean
    warm = httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4},
        timeout=300,
    )
    assert warm.status_code == 200, warm.text
    [old] = srv.instances()
    target = "beta" if old["node"] == "alpha" else "alpha"

    # refused before anything starts, in the admin error shape
    unknown = srv.admin("POST", "/admin/v1/instances/move", json={"name": MODEL, "node": "nowhere"})
    assert unknown.status_code == 404 and "nowhere" in unknown.json()["error"]["message"], unknown.text
    srv.cli("nodes", "cordon", target)
    cordoned = srv.cli("mv", MODEL, "--to-node", target, "--json")
    assert cordoned.returncode != 0 and "cordoned" in cordoned.stderr + cordoned.stdout
    srv.cli("nodes", "uncordon", target)
    assert [i["id"] for i in srv.instances()] == [old["id"]]

    stream: dict[str, Any] = {
        "started": threading.Event(),
        "ended": threading.Event(),
        "chunks": 0,
        "tokens": _stream_tokens(srv),
    }
    streamer = threading.Thread(target=_stream, args=(srv, stream), daemon=True)
    streamer.start()
    assert stream["started"].wait(300) and stream.get("status") == 200, stream
    assert stream["instance"] == old["id"]
    assert wait_until(lambda: stream["chunks"] > 0, timeout=300)

    seen_draining = threading.Event()  # the old instance left routing while the stream was still on it

    def watch() -> None:
        while not stream["ended"].is_set():
            for inst in srv.instances():
                if inst["id"] == old["id"] and inst["state"] == "draining" and inst["in_flight"] >= 1:
                    seen_draining.set()
            time.sleep(0.1)  # a poll interval, nothing timed depends on it

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    load = Load(srv.url, MODEL, workers=8).start()
    try:
        moved = srv.cli("mv", MODEL, "--to-node", target, "--json", timeout=1300)
        assert moved.returncode == 0, moved.stderr
        during = load.total
    finally:
        load.stop()
    result = json.loads(moved.stdout)
    assert result["node"] == target and result["from"] == {"instance": old["id"], "node": old["node"]}
    assert result["cut"] == 0
    assert stream["ended"].wait(600)
    watcher.join(timeout=30)
    assert stream["done"] and "error" not in stream, stream  # the stream finished on the old instance
    assert seen_draining.is_set()
    assert load.failures == [], load.failures[:5]
    assert result["instance"] in load.served  # routing switched to the new instance

    [now] = srv.instances()
    assert now["id"] == result["instance"] and now["node"] == target and now["state"] == "ready"
    assert wait_until(lambda: not psutil.pid_exists(int(old["pid"])), timeout=60)
    assert not _instance_actor_alive(ray_cluster, str(old["id"]))
    again = srv.cli("mv", MODEL, "--to-node", target)
    assert again.returncode != 0 and "already" in again.stderr + again.stdout
    print(
        f"\nmv {old['node']} -> {target}: {result['seconds']:.2f} s (new instance ready after "
        f"{result['ready_seconds']:.2f} s); {during} requests at c=8 during it, 0 failed; "
        f"a {stream['chunks']}-chunk stream finished on the old instance"
    )


@pytest.mark.timeout(900)  # a third node, two loads and a replacement under a c=8 load on a small shared CPU
def test_a_node_killed_under_load_fails_only_its_requests_in_flight(
    clean: ServerProcess, ray_cluster: RayTestCluster
) -> None:
    """Two replicas on alpha and gamma serve a c=8 load; gamma's raylet and workers are killed (by PID,
    no warning): only requests sent before the kill fail (those in flight on gamma), the rest go to alpha,
    and the deployment gets its second replica back on beta."""
    srv = clean
    gamma = ray_cluster.cluster.add_node(
        node_ip_address="127.0.0.1", num_cpus=1, resources={"so_node:gamma": 1}
    )
    try:
        assert wait_until(
            lambda: "gamma" in {n["name"] for n in srv.admin("GET", "/admin/v1/nodes").json()["nodes"]},
            timeout=60,
        )
        srv.cli("nodes", "cordon", "beta")  # spread then puts the two replicas on alpha and gamma
        deployed = srv.cli("deploy", "chat", "--target", f"{MODEL}=100", "--replicas", "2")
        assert deployed.returncode == 0, deployed.stderr
        assert wait_until(lambda: len(_ready(srv)) == 2, timeout=300), srv.instances()
        both = {str(i["node"]): i for i in _ready(srv)}
        assert both.keys() == {"alpha", "gamma"}, both
        srv.cli("nodes", "uncordon", "beta")

        load = Load(srv.url, "chat", workers=8).start()
        try:
            ids = {str(i["id"]) for i in both.values()}
            assert wait_until(lambda: ids <= load.served.keys(), timeout=300), load.served
            killed_at = time.monotonic()
            ray_cluster.cluster.remove_node(gamma, allow_graceful=False)
            gamma = None
            dead = str(both["gamma"]["id"])
            assert wait_until(lambda: dead not in {i["id"] for i in srv.instances()}, timeout=60)
            out_of_routing = time.monotonic() - killed_at

            def replaced() -> dict[str, Any] | None:
                fresh = [i for i in _ready(srv) if i["id"] not in {x["id"] for x in both.values()}]
                return fresh[0] if fresh and str(fresh[0]["id"]) in load.served else None

            assert wait_until(lambda: replaced() is not None, timeout=300), (srv.instances(), load.served)
            serving_again = time.monotonic() - killed_at
            new = replaced()
            assert new is not None and new["node"] == "beta", new
            after = load.total
            assert wait_until(lambda: load.total >= after + 16, timeout=300)
        finally:
            load.stop()
        # only the requests in flight at the kill failed: each was sent before it, none after
        assert len(load.failures) <= load.workers, load.failures
        late = [sent - killed_at for sent in load.failed_sent if sent >= killed_at]
        assert late == [], (late, load.failures)
        assert {str(i["node"]) for i in _ready(srv)} == {"alpha", "beta"}
        assert wait_until(lambda: not psutil.pid_exists(int(both["gamma"]["pid"])), timeout=60)
        print(
            f"\nnode killed at c=8: out of routing after {out_of_routing:.2f} s, its replacement on beta "
            f"serving after {serving_again:.2f} s; {load.total} requests, {len(load.failures)} failed "
            f"(all sent before the kill); {load.served}"
        )
        assert srv.admin("DELETE", "/admin/v1/deployments/chat").status_code == 200
    finally:
        if gamma is not None:
            ray_cluster.cluster.remove_node(gamma)
