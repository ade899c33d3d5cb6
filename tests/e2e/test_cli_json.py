"""``--json`` on the CLI: every command that prints data prints the API's objects, parseable and equal to
what the admin API answers (read over plain HTTP here, not through the client the CLI uses)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import ServerProcess

MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("home")).start()
    try:
        yield server
    finally:
        server.stop()


def _json(srv: ServerProcess, *args: str) -> Any:
    done = srv.cli(*args, "--json")
    assert done.returncode == 0, (args, done.stderr)
    return json.loads(done.stdout)


def _api(srv: ServerProcess, path: str, key: str | None = None) -> Any:
    answer = srv.admin("GET", path)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    return data[key] if key else data


def test_read_commands_print_the_api_objects(srv: ServerProcess) -> None:
    for args, path, key in (
        (("ls",), "/admin/v1/models", "models"),
        (("show", MODEL), f"/admin/v1/models/{MODEL}", None),
        (("ps",), "/admin/v1/instances", "instances"),
        (("events", "--target", MODEL), f"/admin/v1/events?target={MODEL}", "events"),
        (("jobs",), "/admin/v1/jobs", "jobs"),
        (("connections",), "/admin/v1/connections", "connections"),
        (("deployments",), "/admin/v1/deployments", None),
        (("webhooks", "ls"), "/admin/v1/webhooks", "webhooks"),
        (("grounding", "ls"), "/admin/v1/grounding", "grounding"),
        (("plugins", "--server"), "/admin/v1/plugins", "data"),
        (("files", "ls"), "/v1/files", "data"),
        (("vector-stores", "ls"), "/v1/vector_stores?limit=100", "data"),
        (("usage", "--by", "day"), "/admin/v1/usage?by=day", "rows"),
    ):
        assert _json(srv, *args) == _api(srv, path, key), args

    def steady(roots: list[dict[str, Any]]) -> list[dict[str, Any]]:  # free space moves as others write
        return [{k: v for k, v in r.items() if k != "free_bytes"} for r in roots]

    assert steady(_json(srv, "storage")) == steady(_api(srv, "/admin/v1/storage", "roots"))
    status = _json(srv, "status")
    assert status.keys() == _api(srv, "/admin/v1/gateways").keys()
    settings = {s["variable"]: s for s in _json(srv, "config")}
    assert settings["SUPEROLLAMA_HOME"]["value"] == str(srv.home)
    assert settings["SUPEROLLAMA_API_KEY"]["value"] is None  # never a secret in clear


def test_node_changes_are_made_by_the_cli_and_audited(srv: ServerProcess) -> None:
    """cordon, uncordon and drain of this server's own node: the state the API then shows, what a request
    for a model not running gets meanwhile (a cordoned or drained node starts nothing new: a 503 naming
    the way out), and one audit event per change naming the node and (for a drain) the instances it
    stopped."""
    [node] = _api(srv, "/admin/v1/nodes", "nodes")
    name = node["name"]
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}

    def refused(state: str) -> None:
        reply = httpx.post(srv.url + "/v1/chat/completions", json=chat, timeout=120)
        assert reply.status_code == 503 and "Retry-After" in reply.headers, reply.text
        message = reply.json()["error"]["message"]
        assert f"is {state}" in message and f"superollama nodes uncordon {name}" in message, message

    srv.cli("stop", MODEL)
    try:
        assert _json(srv, "nodes", "cordon", name)["state"] == "cordoned"
        assert _api(srv, f"/admin/v1/nodes/{name}")["state"] == "cordoned"
        refused("cordoned")
        assert _api(srv, "/admin/v1/instances", "instances") == []
        assert _json(srv, "nodes", "uncordon", name)["state"] == "ready"
        assert httpx.post(srv.url + "/v1/chat/completions", json=chat, timeout=120).status_code == 200
        [loaded] = _api(srv, "/admin/v1/instances", "instances")
        drained = _json(srv, "nodes", "drain", name)
        assert drained["stopped"] == [loaded["id"]] and drained["node"]["state"] == "draining"
        assert _api(srv, "/admin/v1/instances", "instances") == []
        refused("draining")  # the drained instance does not come back on the next request
    finally:
        srv.cli("nodes", "uncordon", name)
    events = _api(srv, f"/admin/v1/events?target={name}", "events")
    actions = [e["action"] for e in reversed(events)]  # newest first on the wire
    assert actions == ["node.cordon", "node.uncordon", "node.drain", "node.uncordon"]
    drain = next(e for e in events if e["action"] == "node.drain")
    assert drain["detail"] == {"state": "draining", "stopped": [loaded["id"]], "cut": 0}


def test_write_commands_print_what_they_made(srv: ServerProcess, tmp_path: Path) -> None:
    copied = _json(srv, "cp", MODEL, "copy:1")
    details = _api(srv, "/admin/v1/models/copy:1")
    assert {k: details[k] for k in copied} == copied  # the version, as the API has it
    assert copied["name"] == "copy:1"
    assert _json(srv, "disable", "copy:1")["enabled"] is False
    assert _json(srv, "enable", "copy:1")["enabled"] is True
    assert _json(srv, "stop", "copy:1") == {"unloaded": False}
    renamed = _json(srv, "mv", "copy:1", "moved:1")
    assert renamed["name"] == "moved:1"
    assert _json(srv, "rm", "moved:1")["deleted"] == "moved:1"

    hook = _json(srv, "webhooks", "add", "http://127.0.0.1:9/hook", "--events", "model.*")
    assert hook["secret"] and _json(srv, "webhooks", "show", hook["id"]) == {
        k: v for k, v in hook.items() if k != "secret"
    }
    assert _json(srv, "webhooks", "disable", hook["id"])["enabled"] is False
    assert _json(srv, "webhooks", "rm", hook["id"]) == {"deleted": hook["id"]}

    fleet = _json(srv, "export")
    assert fleet == _api(srv, "/admin/v1/export")
    doc = tmp_path / "notes.txt"
    doc.write_text("a small document")
    [uploaded] = _json(srv, "files", "upload", str(doc))
    assert uploaded["filename"] == "notes.txt" and uploaded["bytes"] == doc.stat().st_size
    assert _json(srv, "files", "rm", uploaded["id"])[0]["id"] == uploaded["id"]

    # keys last: once one exists, the server wants one on every call
    issued = _json(srv, "keys", "create", "--name", "ops", "--role", "admin")
    assert issued["key"].startswith("so-")
    shown = _json(srv, "--api-key", issued["key"], "keys", "show", issued["id"])
    assert shown["id"] == issued["id"] and "key" not in shown
    assert [k["id"] for k in _json(srv, "--api-key", issued["key"], "keys", "ls")] == [issued["id"]]
