"""Blobs copied between nodes (``cluster/blobs.py``) and the memory observed after a load, on the real test
cluster: nodes alpha and beta each keep a blob store of their own (``conftest.ray_cluster``), so the
version's file really travels — from the control plane's store to alpha, then from alpha to beta through
Ray (beta's node actor pulls chunks that alpha's serves) — and a copy whose bytes do not hash to the
digest is refused, with nothing left on the node."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.cluster.conftest import RayTestCluster
from tests.cluster.test_ray_cluster import MODEL, _chat, _server
from tests.e2e.conftest import ServerProcess, wait_until

from superollama.app import bundled_model_path

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def blob_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-blobs-home")


@pytest.fixture
def server(blob_home: Path, ray_cluster: RayTestCluster) -> Iterator[ServerProcess]:
    srv = _server(blob_home, ray_cluster)
    try:
        yield srv
    finally:
        for inst in srv.instances():
            srv.cli("stop", str(inst["version"]))
        for node in ("alpha", "beta"):
            srv.admin("POST", f"/admin/v1/nodes/{node}/uncordon")
        srv.stop()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _node(srv: ServerProcess, name: str) -> dict[str, Any]:
    reply = srv.admin("GET", f"/admin/v1/nodes/{name}")
    assert reply.status_code == 200, reply.text
    node: dict[str, Any] = reply.json()
    return dict(node.get("node", node))


def _files(store: Path) -> list[str]:
    blobs = store / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.is_dir() else []


def _only(srv: ServerProcess, node: str) -> dict[str, object]:
    [inst] = srv.instances()
    assert inst["node"] == node
    return inst


def test_blobs_travel_node_to_node_verified_and_a_tampered_copy_is_refused(
    server: ServerProcess, ray_cluster: RayTestCluster
) -> None:
    bundled = bundled_model_path()
    assert bundled is not None
    digest = _sha256(bundled)
    name = digest.replace(":", "-")
    alpha, beta = ray_cluster.stores["alpha"], ray_cluster.stores["beta"]
    for store in (alpha, beta):  # what an earlier test of the session copied there goes
        (store / "blobs" / name).unlink(missing_ok=True)

    # 1. beta cordoned: the instance goes to alpha, whose store lacks the file: copied from the control plane
    server.cli("nodes", "cordon", "beta")
    assert _chat(server)["choices"][0]["message"]["content"]
    inst = _only(server, "alpha")
    assert _files(alpha) == [name] and _files(beta) == []
    assert _sha256(alpha / "blobs" / name) == digest
    model_process = " ".join(psutil.Process(int(inst["pid"])).cmdline())  # type: ignore[call-overload]
    assert str(alpha / "blobs" / name) in model_process  # it runs from alpha's own copy

    def alpha_reports() -> bool:
        node = _node(server, "alpha")["inventory"]
        return bool(node["memory"]) and bool(node["store"]["recent"])

    assert wait_until(alpha_reports, timeout=30), _node(server, "alpha")
    inventory = _node(server, "alpha")["inventory"]
    assert inventory["store"]["root"] == str(alpha)
    copied = inventory["store"]["recent"][-1]
    assert (copied["digest"], copied["source"]) == (digest, "control plane")
    assert copied["bytes"] == bundled.stat().st_size
    [memory] = inventory["memory"]
    assert memory["instance"] == inst["id"] and memory["version"] == MODEL and memory["device"] == "cpu"
    assert memory["estimate"] > 0 and memory["observed_rss"] > 0  # both numbers, side by side
    shown = server.cli("nodes", "show", "alpha")
    assert shown.returncode == 0, shown.stderr
    assert '"observed_rss"' in shown.stdout and '"estimate"' in shown.stdout
    assert server.cli("stop", MODEL).returncode == 0

    # 2. alpha cordoned, beta open: beta gets the file from alpha (node to node), verified, and serves
    server.cli("nodes", "uncordon", "beta")
    server.cli("nodes", "cordon", "alpha")
    assert _chat(server)["choices"][0]["message"]["content"]
    inst = _only(server, "beta")
    assert _files(beta) == [name]
    assert _sha256(beta / "blobs" / name) == digest
    model_process = " ".join(psutil.Process(int(inst["pid"])).cmdline())  # type: ignore[call-overload]
    assert str(beta / "blobs" / name) in model_process
    assert wait_until(lambda: bool(_node(server, "beta")["inventory"]["store"]["recent"]), timeout=30)
    copied = _node(server, "beta")["inventory"]["store"]["recent"][-1]
    assert (copied["digest"], copied["source"], copied["bytes"]) == (digest, "alpha", bundled.stat().st_size)
    assert server.cli("stop", MODEL).returncode == 0

    # 3. alpha's copy tampered with (one byte, same size), beta's gone: beta refuses what alpha sends
    (beta / "blobs" / name).unlink()
    tampered = alpha / "blobs" / name
    try:
        with tampered.open("r+b") as f:
            f.seek(50 * 1024 * 1024)
            byte = f.read(1)
            f.seek(50 * 1024 * 1024)
            f.write(bytes([byte[0] ^ 0xFF]))
        reply = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
            timeout=180,
        )
        assert reply.status_code == 503, reply.text
        message = reply.json()["error"]["message"]
        assert f"blob {digest} copied from alpha: the received bytes hash to sha256:" in message, message
        assert "refused" in message
        assert _files(beta) == []  # no blob, no partial file
        assert server.instances() == []
    finally:
        tampered.unlink(missing_ok=True)
