"""Join tokens through a running server and its CLI: made once and listed without their secret, revoked,
expiring; ``POST /admin/v1/nodes/join`` answers 401 in the admin error shape for a missing, unknown,
revoked or expired token (an API key included), 409 on a server without ``--cluster``; and a join
token opens nothing but the join (401 as an API key)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.e2e.conftest import ServerProcess, wait_until

JOIN = "/admin/v1/nodes/join"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """A server without --cluster whose first key is an admin key."""
    srv = ServerProcess(tmp_path_factory.mktemp("home")).start()
    try:
        made = srv.cli("keys", "create", "--name", "ops", "--role", "admin")
        assert made.returncode == 0, made.stderr
        yield srv, made.stdout.strip()
    finally:
        srv.stop()


def _join(srv: ServerProcess, bearer: str | None, body: object = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return httpx.post(srv.url + JOIN, json=body or {"name": "gpu-box"}, headers=headers, timeout=60)


def _cli_json(srv: ServerProcess, key: str, *args: str) -> object:
    done = srv.cli("--api-key", key, "nodes", "token", *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, dict) and error["message"], error
    return error


def test_tokens_join_only_and_stop_joining_once_revoked_or_expired(
    guarded: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    srv, admin = guarded
    made = _cli_json(srv, admin, "create", "--name", "rack-a", "--expires", "24h")
    assert isinstance(made, dict)
    token = str(made["token"])
    assert token.startswith("soj-") and made["name"] == "rack-a" and made["state"] == "active"
    assert made["expires_at"] is not None

    listed = _cli_json(srv, admin, "ls")
    assert isinstance(listed, list)
    assert [t["name"] for t in listed] == ["rack-a"]
    assert "token" not in listed[0] and "hash" not in listed[0]
    assert token not in json.dumps(listed)

    # without a token, with garbage, with an API key: 401, the admin (OpenAI) shape
    assert "join token" in str(_error(_join(srv, None), 401)["message"])
    assert _error(_join(srv, "soj-nottherightlength"), 401)["message"] == "invalid join token"
    assert _error(_join(srv, admin), 401)["message"] == "invalid join token"

    # a good token on a server without --cluster: 409 saying what to do; a bad name: 400
    refused = _error(_join(srv, token), 409)
    assert "serve --cluster" in str(refused["message"])
    assert _error(_join(srv, token, {"name": "../etc"}), 400)["param"] == "name"
    assert _error(_join(srv, token, {"name": "n1", "labels": {"gpu": 1}}), 400)["param"] in (
        "labels",
        "labels.gpu",
    )

    # the agent says so and exits non-zero before it starts any Ray node
    agent = srv.cli("agent", "--join", srv.url, "--token", token, "--name", "n1", "--labels", "gpu=a100")
    assert agent.returncode == 3 and "serve --cluster" in agent.stderr, agent.stderr
    bad = srv.cli("agent", "--join", srv.url, "--token", token, "--labels", "gpu")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr, bad.stderr

    # a join token is no API key: the admin API and the data plane refuse it
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(srv.url + "/admin/v1/nodes", headers=auth, timeout=60).status_code == 401
    assert httpx.get(srv.url + "/v1/models", headers=auth, timeout=60).status_code == 401
    assert httpx.get(srv.url + "/admin/v1/nodes/tokens", headers=auth, timeout=60).status_code == 401
    # nor does the join route's exemption reach another method on that path
    assert httpx.get(srv.url + JOIN, timeout=60).status_code == 401

    revoked = _cli_json(srv, admin, "revoke", "rack-a")
    assert isinstance(revoked, dict) and revoked["state"] == "revoked" and revoked["revoked_at"]
    assert "revoked" in str(_error(_join(srv, token), 401)["message"])
    agent = subprocess.run(  # the token from the environment, out of ps
        [sys.executable, "-m", "superollama.cli", "agent", "--join", srv.url, "--name", "n1"],
        env={**srv.env, "SUPEROLLAMA_JOIN_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert agent.returncode == 3 and "rack-a" in agent.stderr and "revoked" in agent.stderr, agent.stderr

    # expiry: a token valid for one second is refused once that second has passed
    short = _cli_json(srv, admin, "create", "--expires", "1s")
    assert isinstance(short, dict) and str(short["name"]).startswith("jt_")
    assert wait_until(lambda: _join(srv, str(short["token"])).status_code == 401, timeout=30)
    assert "expired" in str(_error(_join(srv, str(short["token"])), 401)["message"])

    events = srv.admin("GET", "/admin/v1/events", headers={"Authorization": f"Bearer {admin}"}).json()[
        "events"
    ]
    actions = {(e["action"], e["target"]) for e in events if e["action"].startswith("node.token.")}
    assert ("node.token.create", "rack-a") in actions and ("node.token.revoke", "rack-a") in actions
    assert all(token not in json.dumps(e) for e in events)
