"""``pull --node`` on one machine (no ``--cluster``): the server's own node already has the files, any
other node is refused with a 404 before a job starts (nothing pulled, nothing listed), and with no server
running the option is refused, since only a server knows its nodes. The cluster's copy to a node's own
store is tested in ``tests/cluster/test_ray_workers.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import smollm2_path
from tests.e2e.conftest import ServerProcess


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("pull-node")).start()
    try:
        yield server
    finally:
        server.stop()


def _names(srv: ServerProcess) -> set[str]:
    return {m["name"] for m in srv.admin("GET", "/admin/v1/models").json()["models"]}


def test_pull_to_the_only_node_and_refusals(srv: ServerProcess, tmp_path: Path) -> None:
    gguf = str(smollm2_path())
    done = srv.cli("pull", gguf, "--name", "smollm2:here", "--node", "local", "--json")
    assert done.returncode == 0, done.stderr
    pulled = json.loads(done.stdout)
    assert pulled["name"] == "smollm2:here"
    assert pulled["node"]["name"] == "local" and pulled["node"]["own_store"] is False
    assert Path(pulled["node"]["path"]).is_file()

    refused = srv.cli("pull", gguf, "--name", "smollm2:there", "--node", "elsewhere")
    assert refused.returncode != 0
    assert "node 'elsewhere' not found (nodes: local)" in refused.stderr, refused.stderr
    assert "smollm2:there" not in _names(srv)

    # the admin API itself: the 404 in the admin shape, and no job was made for it
    jobs_before = len(srv.admin("GET", "/admin/v1/jobs").json()["jobs"])
    reply = httpx.post(
        srv.url + "/admin/v1/pull",
        json={"source": gguf, "name": "smollm2:there", "node": "elsewhere", "stream": False},
        timeout=60,
    )
    assert reply.status_code == 404, reply.text
    assert reply.json()["error"]["param"] == "node"
    assert len(srv.admin("GET", "/admin/v1/jobs").json()["jobs"]) == jobs_before
    bad = httpx.post(srv.url + "/admin/v1/pull", json={"source": gguf, "node": 3}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "node", bad.text

    # no server: only a server knows its nodes
    offline = subprocess.run(
        [sys.executable, "-m", "superollama.cli", "pull", gguf, "--node", "local"],
        env={**srv.env, "SUPEROLLAMA_HOME": str(tmp_path), "SUPEROLLAMA_URL": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert offline.returncode != 0 and "--node needs a running server" in offline.stderr, offline.stderr
