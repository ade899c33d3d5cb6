"""Blobs copied between nodes (``cluster/blobs.py``) and the memory observed after a load, on the real test
cluster: nodes alpha and beta each keep a blob store of their own (``conftest.ray_cluster``), so the
version's file really travels — from the control plane's store to alpha, then from alpha to beta through
Ray (beta's node actor pulls chunks that alpha's serves) — and a copy whose bytes do not hash to the
digest is refused, with nothing left on the node.

Folder versions: the real all-MiniLM-L6-v2 sentence-transformers folder, served by the transformers
runtime as an instance actor. A node without a store of its own (``delta``, added for the test) serves
it from the control plane's files, the reference; beta gets every file copied and verified, builds the
folder, and answers the same vectors. A copy cut midway (the source frozen, the target's actor killed)
resumes from its partial file; a tampered file is refused."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.cluster.conftest import RayTestCluster
from tests.cluster.test_ray_cluster import MODEL, _chat, _server
from tests.cluster.test_ray_replicas import HEADER
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.test_lifecycle_ops import HubThread

from superollama.app import bundled_model_path
from superollama.store.manifests import ManifestStore

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


# -- folder versions ---------------------------------------------------------------------------------------
EMBEDDER = "minilm:latest"
TWIN = "minilm:twin"  # the same files under another name (``cp``)
TEXTS = ["a cat sits on the mat", "node to node, verified"]


@pytest.fixture(scope="module")
def folder_server(
    tmp_path_factory: pytest.TempPathFactory, ray_cluster: RayTestCluster, minilm_dir: Path
) -> Iterator[ServerProcess]:
    """A control plane that pulled the real all-MiniLM-L6-v2 folder (from a stand-in of the hub)."""
    with HubThread() as hub:
        hub.add_hf_repo(
            "sentence-transformers/all-MiniLM-L6-v2",
            {str(p.relative_to(minilm_dir)): p for p in sorted(minilm_dir.rglob("*")) if p.is_file()},
        )
        srv = ServerProcess(
            tmp_path_factory.mktemp("cluster-folders-home"),
            SUPEROLLAMA_CLUSTER="1",
            SUPEROLLAMA_CLUSTER_ADDRESS=ray_cluster.address,
            SUPEROLLAMA_CLUSTER_HOST="127.0.0.1",
            SUPEROLLAMA_BUNDLED_MODEL="false",
            HF_ENDPOINT=hub.url,
            **ray_cluster.env,
        ).start(timeout=180)
        try:
            pulled = srv.cli("pull", "hf://sentence-transformers/all-MiniLM-L6-v2", "--name", "minilm")
            assert pulled.returncode == 0, pulled.stderr
            yield srv
        finally:
            for inst in srv.instances():
                srv.cli("stop", str(inst["version"]))
            for node in ("alpha", "beta"):
                srv.admin("POST", f"/admin/v1/nodes/{node}/uncordon")
            srv.stop()


def _manifest_files(srv: ServerProcess) -> dict[str, tuple[str, int]]:
    """The folder's files as the control plane's manifest records them: path → (digest, size)."""
    manifest = ManifestStore(srv.home).read(EMBEDDER)
    return {la.filename: (la.digest, la.size) for la in manifest.layers if la.filename}


def _clear_folder(store: Path, files: dict[str, tuple[str, int]]) -> None:
    """What an earlier test left of the folder on a node: its blobs, partial files and folders."""
    for digest, _ in files.values():
        hexdigest = digest.split(":", 1)[1]
        (store / "blobs" / f"sha256-{hexdigest}").unlink(missing_ok=True)
        (store / "blobs" / f"transfer-{hexdigest}.partial").unlink(missing_ok=True)
    shutil.rmtree(store / "models", ignore_errors=True)


def _embed(srv: ServerProcess, model: str = EMBEDDER) -> httpx.Response:
    return httpx.post(srv.url + "/v1/embeddings", json={"model": model, "input": TEXTS}, timeout=300)


def _vectors(reply: httpx.Response) -> list[list[float]]:
    assert reply.status_code == 200, reply.text
    return [item["embedding"] for item in reply.json()["data"]]


def _served_by(srv: ServerProcess, reply: httpx.Response) -> dict[str, object]:
    [inst] = [i for i in srv.instances() if i["id"] == reply.headers[HEADER]]
    return inst


def _folder_of(inst: dict[str, object]) -> Path:
    """The folder the instance's worker was started on (its ``--model``)."""
    argv = psutil.Process(int(inst["pid"])).cmdline()  # type: ignore[call-overload]
    return Path(argv[argv.index("--model") + 1])


def _stop(srv: ServerProcess) -> None:
    for inst in srv.instances():
        assert srv.cli("stop", str(inst["version"])).returncode == 0
    assert wait_until(lambda: srv.instances() == [], timeout=60), srv.instances()


def test_a_folder_version_is_copied_to_the_node_verified_and_serves_the_same_vectors(
    folder_server: ServerProcess, ray_cluster: RayTestCluster
) -> None:
    srv = folder_server
    files = _manifest_files(srv)
    assert {"model.safetensors", "modules.json", "1_Pooling/config.json"} <= files.keys()
    alpha, beta = ray_cluster.stores["alpha"], ray_cluster.stores["beta"]
    for store in (alpha, beta):
        _clear_folder(store, files)

    # 1. the reference: a node without a store of its own serves from the control plane's files
    delta = ray_cluster.cluster.add_node(
        node_ip_address="127.0.0.1", num_cpus=1, resources={"so_node:delta": 1}
    )
    try:
        srv.cli("nodes", "cordon", "alpha")
        srv.cli("nodes", "cordon", "beta")
        assert wait_until(
            lambda: "delta" in {n["name"] for n in srv.admin("GET", "/admin/v1/nodes").json()["nodes"]}
        )
        reply = _embed(srv)
        reference = _vectors(reply)
        inst = _served_by(srv, reply)
        assert inst["node"] == "delta"
        assert _folder_of(inst).is_relative_to(srv.home / "models")  # the control plane's own folder
        _stop(srv)
    finally:
        ray_cluster.cluster.remove_node(delta)

    # 2. beta, a store of its own and none of the files: each copied and verified, then the folder. Two
    # versions of the same files loading at once share the copy (one transfer per file, one folder)
    assert srv.cli("cp", EMBEDDER, TWIN).returncode == 0
    srv.cli("nodes", "uncordon", "beta")
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda model: _embed(srv, model), (EMBEDDER, TWIN)))
    first = time.monotonic() - started
    for reply in replies:
        vectors = _vectors(reply)
        assert len(vectors) == 2 and len(vectors[0]) == 384
        assert (
            max(
                abs(a - b) for v, r in zip(vectors, reference, strict=True) for a, b in zip(v, r, strict=True)
            )
            < 1e-5
        )
    assert _folder_of(_served_by(srv, replies[0])) == _folder_of(_served_by(srv, replies[1]))
    inst = _served_by(srv, replies[0])
    assert inst["node"] == "beta" and inst["runtime"] == "transformers"
    folder = _folder_of(inst)
    assert folder.parent == beta / "models"  # it runs from beta's own copy
    argv = psutil.Process(int(inst["pid"])).cmdline()  # type: ignore[call-overload]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"  # the node's address, set by its instance actor
    for path, (digest, size) in files.items():
        blob = beta / "blobs" / digest.replace(":", "-")
        assert _sha256(blob) == digest and blob.stat().st_size == size
        assert (folder / path).samefile(blob)
    assert not list((beta / "blobs").glob("*.partial"))

    def copied() -> dict[str, Any] | None:
        done = _node(srv, "beta")["inventory"]["store"].get("folders") or []
        return done[-1] if done else None

    assert wait_until(lambda: copied() is not None, timeout=30), _node(srv, "beta")
    summary = copied()
    assert summary is not None and summary["version"] in (EMBEDDER, TWIN)
    assert (summary["folder"], summary["files"], summary["transfers"]) == (
        folder.name,
        len(files),
        len(files),
    )
    built = [f for f in _node(srv, "beta")["inventory"]["store"]["folders"] if f["folder"] == folder.name]
    assert len(built) == 1  # built once for both versions
    assert summary["bytes"] == sum(size for _, size in files.values())
    print(
        f"\nMEASURED folder copy to beta: {summary['files']} files, {summary['bytes'] / 2**20:.1f} MiB in "
        f"{summary['seconds']:.2f} s; first embedding after {first:.1f} s"
    )
    _stop(srv)
    srv.cli("nodes", "uncordon", "alpha")


def _store_pid(srv: ServerProcess, node: str) -> int:
    """The process of the node's actor: it holds the node's store and serves its chunks."""
    return int(_node(srv, node)["inventory"]["store"]["pid"])


def test_a_folder_copy_cut_midway_resumes_and_a_tampered_file_is_refused(
    folder_server: ServerProcess, ray_cluster: RayTestCluster
) -> None:
    srv = folder_server
    files = _manifest_files(srv)
    digest, size = files["model.safetensors"]
    hexdigest = digest.split(":", 1)[1]
    alpha, beta = ray_cluster.stores["alpha"], ray_cluster.stores["beta"]
    _clear_folder(alpha, files)
    if not (beta / "blobs" / f"sha256-{hexdigest}").is_file():  # run alone: beta gets its copy first
        srv.cli("nodes", "cordon", "alpha")
        assert _served_by(srv, reply := _embed(srv))["node"] == "beta", reply.text
        _stop(srv)
        srv.cli("nodes", "uncordon", "alpha")

    # 1. alpha copies the folder from beta; once part of model.safetensors is written, beta's actor is
    # frozen (SIGSTOP: nothing more comes) and alpha's is killed: the load fails, the partial file stays
    srv.cli("nodes", "cordon", "beta")
    srv.cli("nodes", "uncordon", "alpha")
    partial = alpha / "blobs" / f"transfer-{hexdigest}.partial"
    source, target = _store_pid(srv, "beta"), _store_pid(srv, "alpha")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        cut = pool.submit(_embed, srv)
        try:
            assert wait_until(
                lambda: partial.is_file() and partial.stat().st_size > 0, timeout=120, interval=0.002
            )
            os.kill(source, signal.SIGSTOP)
            os.kill(target, signal.SIGKILL)
            assert wait_until(lambda: not psutil.pid_exists(target), timeout=30)
        finally:
            os.kill(source, signal.SIGCONT)
        reply = cut.result()
    assert reply.status_code == 503, reply.text
    kept = partial.stat().st_size
    assert 0 < kept < size  # cut midway
    assert not (alpha / "models").exists() or not list((alpha / "models").iterdir())  # no folder

    # 2. the next load resumes the file from the bytes kept, verifies it and builds the folder
    reply = _embed(srv)
    assert len(_vectors(reply)) == 2
    inst = _served_by(srv, reply)
    assert inst["node"] == "alpha" and _folder_of(inst).parent == alpha / "models"
    assert _sha256(alpha / "blobs" / f"sha256-{hexdigest}") == digest and not partial.exists()
    recent = {r["digest"]: r for r in _node(srv, "alpha")["inventory"]["store"]["recent"]}
    resumed = recent[digest]
    assert (resumed["source"], resumed["resumed_from"], resumed["bytes"]) == ("beta", kept, size - kept)
    print(f"\nMEASURED resume on alpha: {kept / 2**20:.1f} MiB kept of {size / 2**20:.1f} MiB")
    _stop(srv)

    # 3. beta's copy of model.safetensors tampered with (one byte, same size), alpha's gone: alpha refuses
    # what beta sends, 503, and keeps nothing of it and no folder
    _clear_folder(alpha, files)
    tampered = beta / "blobs" / f"sha256-{hexdigest}"
    with tampered.open("r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    try:
        reply = _embed(srv)
        assert reply.status_code == 503, reply.text
        message = reply.json()["error"]["message"]
        assert f"blob {digest} copied from beta: the received bytes hash to sha256:" in message, message
        assert "refused, nothing kept" in message and "model.safetensors of minilm:latest" in message
        assert not (alpha / "blobs" / f"sha256-{hexdigest}").exists() and not partial.exists()
        assert not (alpha / "models").exists() or not list((alpha / "models").iterdir())
        assert srv.instances() == []
    finally:
        tampered.unlink(missing_ok=True)
        srv.cli("nodes", "uncordon", "beta")
