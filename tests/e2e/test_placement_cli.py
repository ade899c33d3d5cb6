"""Placement constraints through the CLI on one machine (no ``--cluster``: the only node is ``local``).

``deploy … --device --node --labels --spread`` and ``scale VERSION --replicas N …``: bad input is a 400
naming the parameter, a pin to an unknown node a 404, a constraint this machine cannot meet a 503 saying
why (``--device gpu`` without a GPU, labels ``local`` lacks); ``nodes label local zone=b`` makes the
labels match. The constraint is kept in the registry: ``deployments show --json`` shows it after a
restart, and the first start after the restart honours it (the node's label removed → a 503).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_contract_conformance import Conformance

A = "smollm2:135m"


def _ok(srv: ServerProcess, *args: str) -> Any:
    done = srv.cli(*args, "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _refused(srv: ServerProcess, *args: str) -> str:
    done = srv.cli(*args, timeout=300)
    assert done.returncode != 0, done.stdout
    return done.stderr


def _chat(srv: ServerProcess, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=300)


@pytest.mark.timeout(900)  # three SmolLM2 loads and a restart on a small shared CPU
def test_placement_constraints_on_one_machine(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    srv = ServerProcess(home).start(timeout=120)
    try:
        _refusals(srv)
        _deploy_on_labels(srv)
    finally:
        srv.stop()
    srv = ServerProcess(home).start(timeout=120)  # the same registry: a restart
    try:
        _after_restart(srv)
        _scale_version(srv)
    finally:
        srv.stop()


def _refusals(srv: ServerProcess) -> None:
    deploy = ("deploy", "chat", "--target", f"{A}=100")
    # malformed: 400 naming the parameter, in the admin shape (``placement.device``: the contract's check)
    bad = srv.admin(
        "PUT", "/admin/v1/deployments/chat", json={"targets": [A], "placement": {"device": "tpu"}}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"].endswith("device"), bad.text
    assert "'tpu' is not one of ['cpu', 'gpu', 'any'" in _refused(srv, *deploy, "--device", "tpu")
    bad = srv.admin(
        "PUT", "/admin/v1/deployments/chat", json={"targets": [A], "placement": {"labels": "zone"}}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "labels", bad.text
    assert "key=value" in _refused(srv, *deploy, "--labels", "zone")
    # a pin to a node that does not exist: 404
    gone = srv.admin(
        "PUT", "/admin/v1/deployments/chat", json={"targets": [A], "placement": {"node": "gamma"}}
    )
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "node", gone.text
    assert "node 'gamma' not found (nodes: local)" in _refused(srv, *deploy, "--node", "gamma")
    # nothing fits: 503 with placement's reason; nothing was deployed
    local = srv.admin("GET", "/admin/v1/nodes/local").json()
    if not any(d.get("kind") == "cuda" for d in local["inventory"].get("devices", [])):
        gpu = srv.admin(
            "PUT", "/admin/v1/deployments/chat", json={"targets": [A], "placement": {"device": "gpu"}}
        )
        assert gpu.status_code == 503, gpu.text
        assert "needs a GPU; none on the eligible nodes (local)" in gpu.json()["error"]["message"]
    assert "local lacks labels zone=b" in _refused(srv, *deploy, "--labels", "zone=b")
    assert srv.admin("GET", "/admin/v1/deployments/chat").status_code == 404
    assert srv.instances() == []  # refused before anything started


def _deploy_on_labels(srv: ServerProcess) -> None:
    labelled = _ok(srv, "nodes", "label", "local", "zone=b", "gpu=none")
    assert labelled["inventory"]["labels"] == {"zone": "b", "gpu": "none"}
    assert _ok(srv, "nodes", "label", "local", "gpu-")["inventory"]["labels"] == {"zone": "b"}
    deployed = _ok(
        srv, "deploy", "chat", "--target", f"{A}=100", "--node", "local", "--labels", "zone=b", "--spread",
        "--device", "cpu", "--replicas", "2",
    )  # fmt: skip
    want = {"device": "cpu", "node": "local", "labels": {"zone": "b"}, "spread": True}
    assert deployed["targets"][0]["placement"] == want, deployed
    assert deployed["live"][0]["placement"] == want
    assert len(deployed["live"][0]["instances"]) == 2
    assert {i["node"] for i in deployed["live"][0]["instances"]} == {"local"}
    # the answers fit the published schemas (placement on targets, the labels route)
    api = Conformance(srv.url)
    api("GET", "/admin/v1/deployments/{name}", 200, path={"name": "chat"})
    api("GET", "/admin/v1/deployments", 200)
    api("POST", "/admin/v1/nodes/{name}/labels", 200, path={"name": "local"}, json={"set": {"zone": "b"}})
    api("POST", "/admin/v1/nodes/{name}/labels", 400, path={"name": "local"}, json={"set": {"zone": "a b"}})
    api("POST", "/admin/v1/nodes/{name}/labels", 404, path={"name": "gamma"}, json={"remove": ["zone"]})
    shown = srv.cli("deployments", "show", "chat")
    assert all(w in shown.stdout for w in ("PLACEMENT", "device=cpu", "node=local", "labels=zone=b")), (
        shown.stdout
    )
    # the existing form still works, and keeps the target's placement
    scaled = _ok(srv, "scale", "chat", A, "1")
    assert scaled["targets"][0]["placement"] == want and scaled["targets"][0]["replicas"] == 1


def _after_restart(srv: ServerProcess) -> None:
    shown = _ok(srv, "deployments", "show", "chat")
    assert shown["targets"][0]["placement"] == {
        "device": "cpu",
        "node": "local",
        "labels": {"zone": "b"},
        "spread": True,
    }
    shown_node = srv.cli("nodes", "show", "local")  # prints JSON
    assert json.loads(shown_node.stdout)["inventory"]["labels"] == {"zone": "b"}  # kept too
    _ok(srv, "nodes", "label", "local", "zone-")
    refused = _chat(srv, "chat")  # the first start after the restart honours the kept constraint
    assert refused.status_code == 503, refused.text
    assert "local lacks labels zone=b" in refused.json()["error"]["message"]
    _ok(srv, "nodes", "label", "local", "zone=b")
    assert _chat(srv, "chat").status_code == 200


def _scale_version(srv: ServerProcess) -> None:
    # the version runs under chat's placement: another one asked of it is refused (one pool)
    clash = _refused(srv, "scale", A, "--replicas", "2", "--device", "gpu")
    assert "runs under deployment 'chat'" in clash
    _ok(srv, "deployments", "rm", "chat")
    scaled = _ok(srv, "scale", A, "--replicas", "2", "--device", "cpu", "--labels", "zone=b")
    assert scaled["replicas"] == 2 and scaled["wanted"] == 2
    assert scaled["placement"] == {"device": "cpu", "node": None, "labels": {"zone": "b"}, "spread": False}
    ready = [i for i in srv.instances() if i["version"] == A and i["state"] == "ready"]
    assert len(ready) == 2, ready
    api = Conformance(srv.url)
    again = api("POST", "/admin/v1/models/{name}/scale", 200, path={"name": A}, json={"replicas": 2}).json()
    assert again["placement"] == scaled["placement"]  # absent: the placement it had
    api("POST", "/admin/v1/models/{name}/scale", 404, path={"name": "nope:1"}, json={"replicas": 2})
    bad = api("POST", "/admin/v1/models/{name}/scale", 400, path={"name": A}, json={"replicas": 0})
    assert bad.json()["error"]["param"].endswith("replicas")
