"""``superollama keys create | ls | show | revoke | rotate`` through a real server's admin API, and offline
on the home's registry. (Auth enforcement on requests is tested where it is wired into the request path.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.conftest import ServerProcess

KEY = re.compile(r"^so-[a-z0-9]{8}[A-Za-z0-9_-]{40}$")


@pytest.fixture(scope="module")
def keys_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("home")
    srv = ServerProcess(home, SUPEROLLAMA_BUNDLED_MODEL="false").start()
    try:
        yield srv
    finally:
        srv.stop()


def run_json(srv: ServerProcess, *args: str) -> Any:
    done = srv.cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_create_shows_the_key_once_and_ls_show_never(keys_server: ServerProcess) -> None:
    srv = keys_server
    done = srv.cli(
        "keys",
        "create",
        "--name",
        "ci",
        "--models",
        "smollm2:*,openai/gpt-4o",
        "--rpm",
        "60",
        "--tpm",
        "10000",
        "--model-rpm",
        "smollm2:*=5",
        "--model-tpm",
        "smollm2:*=500",
        "--budget",
        "2.5",
        "--period",
        "week",
        "--expires",
        "30d",
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert KEY.match(key), done.stdout  # stdout carries only the key: KEY=$(superollama keys create …)
    assert "cannot be shown again" in done.stderr

    listed = run_json(srv, "keys", "ls")
    assert len(listed) == 1
    k = listed[0]
    assert k["prefix"] == key[:11] and k["name"] == "ci" and k["role"] == "user" and k["state"] == "active"
    assert k["models"] == ["smollm2:*", "openai/gpt-4o"]
    assert (k["rpm"], k["tpm"], k["budget_usd"], k["budget_period"]) == (60, 10000, 2.5, "week")
    assert k["model_limits"] == {"smollm2:*": {"rpm": 5, "tpm": 500}}
    assert k["expires_at"] is not None and k["revoked_at"] is None

    shown = run_json(srv, "keys", "show", k["prefix"])
    assert shown["id"] == k["id"]
    table = srv.cli("keys", "ls")
    assert table.returncode == 0 and k["prefix"] in table.stdout
    for output in (json.dumps(listed), json.dumps(shown), table.stdout, srv.cli("events").stdout):
        assert key not in output and key[11:] not in output  # the secret never comes back
    assert "hash" not in shown


def test_rotate_then_revoke(keys_server: ServerProcess) -> None:
    srv = keys_server
    created = run_json(srv, "keys", "create", "--name", "rotating", "--role", "admin")
    assert KEY.match(created["key"]) and created["role"] == "admin"

    # an admin key now exists: the admin API wants one (the old key works until it is rotated away)
    assert srv.cli("keys", "ls").returncode == 1
    rotated = run_json(srv, "--api-key", created["key"], "keys", "rotate", created["id"])
    assert rotated["id"] == created["id"] and rotated["role"] == "admin"
    assert KEY.match(rotated["key"]) and rotated["key"] != created["key"]
    assert rotated["prefix"] != created["prefix"]

    assert srv.cli("--api-key", created["key"], "keys", "ls").returncode == 1  # rotated away
    done = srv.cli("--api-key", rotated["key"], "keys", "revoke", rotated["prefix"])
    assert done.returncode == 0, done.stderr
    assert "revoked 'rotating'" in done.stdout
    shown = run_json(srv, "keys", "show", created["id"])  # no admin key is active any more: open again
    assert shown["state"] == "revoked" and shown["revoked_at"]

    refused = srv.cli("keys", "rotate", created["id"])
    assert refused.returncode == 1 and "revoked" in refused.stderr
    missing = srv.cli("keys", "show", "so-00000000")
    assert missing.returncode == 1 and "not found" in missing.stderr

    events = srv.admin("GET", "/admin/v1/events", params={"target": created["id"]}).json()["events"]
    assert [e["action"] for e in reversed(events)] == ["key.create", "key.rotate", "key.revoke"]
    assert {e["actor"] for e in events} == {"cli"}


def test_admin_api_validates(keys_server: ServerProcess) -> None:
    srv = keys_server
    bad = srv.admin("POST", "/admin/v1/keys", json={"name": "x", "budget_period": "year"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "budget_period"
    bad = srv.admin("POST", "/admin/v1/keys", json={"name": "x", "expires_in": "soon"})
    assert bad.status_code == 400
    created = srv.admin("POST", "/admin/v1/keys", json={"name": "api", "models": "a,b*", "expires_in": "1h"})
    assert created.status_code == 201 and created.json()["models"] == ["a", "b*"]
    assert srv.cli("keys", "create", "--name", "x", "--model-rpm", "nope").returncode == 2


def test_offline_on_the_home_registry(tmp_path: Path) -> None:
    """No server: the first admin key is made on the registry directly, before `serve`."""
    home = tmp_path / "home"
    home.mkdir()
    srv = ServerProcess(home)  # never started: only its environment and CLI runner
    srv.url = "http://127.0.0.1:9"  # nothing listens there
    done = srv.cli("keys", "create", "--name", "bootstrap", "--role", "admin")
    assert done.returncode == 0, done.stderr
    assert KEY.match(done.stdout.strip()) and "no server" in done.stderr
    listed = run_json(srv, "keys", "ls", "--offline")
    assert [(k["name"], k["role"]) for k in listed] == [("bootstrap", "admin")]
    assert srv.cli("keys", "revoke", listed[0]["id"], "--offline").returncode == 0
    assert run_json(srv, "keys", "show", listed[0]["prefix"], "--offline")["state"] == "revoked"
