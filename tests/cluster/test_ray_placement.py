"""Placement constraints on a real Ray cluster (``conftest.ray_cluster``: alpha, beta), the server's policy
left at ``binpack``, which puts two replicas on one node (the tightest, after the first one's reservation).
``--spread --replicas 2`` lands one replica on each node; with a pin (``--node beta``) or labels only beta
carries (``--labels zone=b``, set by ``nodes label``) the same two spread replicas both land on beta: the
constraint, not a default, decides (a pin or label filter that did nothing would leave one on alpha).
A new constraint for the running target (``--labels zone=a``) moves its instances to alpha.

One server for the three steps (each SmolLM2 load costs seconds here, and the cluster minutes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.cluster.conftest import RayTestCluster
from tests.e2e.conftest import ServerProcess, wait_until

pytestmark = pytest.mark.cluster

MODEL = "smollm2:135m"


@pytest.fixture
def server(tmp_path: Path, ray_cluster: RayTestCluster) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path,
        SUPEROLLAMA_CLUSTER="1",
        SUPEROLLAMA_CLUSTER_ADDRESS=ray_cluster.address,
        SUPEROLLAMA_CLUSTER_HOST="127.0.0.1",
        SUPEROLLAMA_PLACEMENT_POLICY="binpack",
        **ray_cluster.env,
    ).start(timeout=180)
    try:
        yield srv
    finally:
        for inst in srv.instances():  # detached actors: stopped here, or they outlive the test
            srv.cli("stop", str(inst["version"]))
        srv.stop()


def _ok(srv: ServerProcess, *args: str) -> Any:
    done = srv.cli(*args, "--json", timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _nodes_of(srv: ServerProcess) -> list[str]:
    return sorted(str(i["node"]) for i in srv.instances() if i["state"] == "ready")


def _chat(srv: ServerProcess) -> httpx.Response:
    body = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=300)


def _clear(srv: ServerProcess) -> None:
    _ok(srv, "deployments", "rm", "chat")
    srv.cli("stop", MODEL)
    assert wait_until(lambda: srv.instances() == [], timeout=120), srv.instances()


@pytest.mark.timeout(1200)  # eight loads (blob copy + load each) on a small shared CPU
def test_node_pin_labels_and_spread_move_instances_off_the_binpack_default(server: ServerProcess) -> None:
    srv = server
    spread = ("--spread", "--replicas", "2")
    pinned = _ok(srv, "deploy", "chat", "--target", f"{MODEL}=100", "--node", "beta", *spread)
    assert pinned["targets"][0]["placement"]["node"] == "beta"
    assert _nodes_of(srv) == ["beta", "beta"]
    _clear(srv)

    assert _ok(srv, "nodes", "label", "beta", "zone=b")["inventory"]["labels"] == {"zone": "b"}
    _ok(srv, "nodes", "label", "alpha", "zone=a")
    labelled = _ok(srv, "deploy", "chat", "--target", f"{MODEL}=100", "--labels", "zone=b", *spread)
    assert labelled["targets"][0]["placement"]["labels"] == {"zone": "b"}
    assert _nodes_of(srv) == ["beta", "beta"]
    # the labels outlive the nodes' own refreshes (every few seconds): still there, still matched
    shown = json.loads(srv.cli("nodes", "show", "beta").stdout)
    assert shown["inventory"]["labels"] == {"zone": "b"}
    # a new constraint for the running target: its instances that no longer meet it move (new first)
    on_beta = {str(i["id"]) for i in srv.instances()}
    moved = _ok(srv, "deploy", "chat", "--target", f"{MODEL}=100", "--labels", "zone=a", *spread)
    assert moved["targets"][0]["placement"]["labels"] == {"zone": "a"}
    assert _nodes_of(srv) == ["alpha", "alpha"]
    assert not on_beta & {str(i["id"]) for i in srv.instances()}  # the old ones stopped
    assert _chat(srv).status_code == 200
    _clear(srv)

    spreading = _ok(srv, "deploy", "chat", "--target", f"{MODEL}=100", *spread)
    assert spreading["targets"][0]["placement"]["spread"] is True
    assert wait_until(lambda: len(_nodes_of(srv)) == 2, timeout=300), srv.instances()
    assert _nodes_of(srv) == ["alpha", "beta"]  # binpack alone would put both on alpha
