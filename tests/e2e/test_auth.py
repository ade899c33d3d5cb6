"""API keys on the request path of a running server: 401/403/429 in each client's protocol, model
visibility per key, rate-limit headers, budgets, revocation, and the admin API's admin-only rule."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from tests.e2e.conftest import ServerProcess

MODEL = "smollm2:135m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


PRICES = json.dumps({"smollm2:*": {"input": 1_000_000, "output": 1_000_000}})  # $1 a token


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[ServerProcess]:
    home = tmp_path / "home"
    home.mkdir()
    srv = ServerProcess(home).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """A server whose first key is an admin key (as an operator sets one up), prices at $1 a token."""
    srv = ServerProcess(tmp_path_factory.mktemp("home"), SUPEROLLAMA_PRICE_TABLE=PRICES).start()
    try:
        yield srv, _key(srv, "--name", "ops", "--role", "admin")
    finally:
        srv.stop()


def _key(srv: ServerProcess, *args: str, admin_key: str | None = None) -> str:
    env_key = ["--api-key", admin_key] if admin_key else []
    done = srv.cli(*env_key, "keys", "create", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _post(
    srv: ServerProcess, key: str | None, path: str = "/v1/chat/completions", body: object = CHAT
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(srv.url + path, json=body, headers=headers, timeout=120)


def test_keys_guard_the_data_plane_and_the_admin_api(open_server: ServerProcess) -> None:
    srv = open_server
    assert _post(srv, None).status_code == 200  # no keys yet: loopback stays open

    user = _key(srv, "--name", "app")  # the first key: a user key …
    missing = _post(srv, None)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert "X-Request-Id" in missing.headers
    ollama = httpx.post(srv.url + "/api/chat", json={"model": MODEL, "messages": []}, timeout=120)
    assert ollama.status_code == 401 and isinstance(ollama.json()["error"], str)  # Ollama's shape
    assert _post(srv, user).status_code == 200
    assert _post(srv, "so-deadbeefAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").status_code == 401
    # … does not lock the operator out of the admin API until an admin key exists
    admin = _key(srv, "--name", "ops", "--role", "admin")
    assert srv.admin("GET", "/admin/v1/models").status_code == 401
    as_user = srv.admin("GET", "/admin/v1/models", headers={"Authorization": f"Bearer {user}"})
    assert as_user.status_code == 403 and as_user.json()["error"]["code"] == "admin_required"
    assert (
        srv.admin("GET", "/admin/v1/models", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    )
    no_key_cli = srv.cli("ls")
    assert no_key_cli.returncode == 1 and "API key" in no_key_cli.stderr
    assert MODEL in srv.cli("--api-key", admin, "ls").stdout

    # the official SDK with a key, and x-api-key as Anthropic-style clients send it
    client = OpenAI(base_url=srv.url + "/v1", api_key=user, max_retries=0)
    assert client.chat.completions.create(**CHAT).choices  # type: ignore[call-overload]
    assert (
        httpx.post(
            srv.url + "/v1/chat/completions", json=CHAT, headers={"x-api-key": user}, timeout=120
        ).status_code
        == 200
    )

    # the Ollama API's catalog changes (pull, copy, delete) need an admin key too
    bearer = {"Authorization": f"Bearer {user}"}
    for method, path, body in (
        ("DELETE", "/api/delete", {"model": MODEL}),
        ("POST", "/api/copy", {"source": MODEL, "destination": "stolen:1"}),
        ("POST", "/api/pull", {"model": "file:///etc/hostname", "stream": False}),
    ):
        refused = httpx.request(method, srv.url + path, json=body, headers=bearer)
        assert refused.status_code == 403 and isinstance(refused.json()["error"], str), path
    assert MODEL in srv.cli("--api-key", admin, "ls").stdout

    # revocation takes effect at once
    key_id = json.loads(srv.cli("--api-key", admin, "keys", "ls", "--json").stdout)
    app_id = next(k["id"] for k in key_id if k["name"] == "app")
    assert srv.cli("--api-key", admin, "keys", "revoke", app_id).returncode == 0
    revoked = _post(srv, user)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]


def test_model_patterns_limit_what_a_key_sees_and_calls(guarded: tuple[ServerProcess, str]) -> None:
    srv, admin = guarded
    assert srv.cli("--api-key", admin, "cp", MODEL, "other:1").returncode == 0
    scoped = _key(srv, "--name", "scoped", "--models", "smollm2:*", admin_key=admin)
    client = OpenAI(base_url=srv.url + "/v1", api_key=scoped, max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]
    tags = httpx.get(srv.url + "/api/tags", headers={"Authorization": f"Bearer {scoped}"}, timeout=120).json()
    assert [m["name"] for m in tags["models"]] == [MODEL]
    with pytest.raises(openai.NotFoundError) as info:  # outside its scope: as if it did not exist
        client.chat.completions.create(model="other:1", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.code == "model_not_found"
    admin_client = OpenAI(base_url=srv.url + "/v1", api_key=admin, max_retries=0)
    assert {"other:1", MODEL} <= {m.id for m in admin_client.models.list()}


def test_rate_limit_is_429_with_openai_headers(guarded: tuple[ServerProcess, str]) -> None:
    srv, admin = guarded
    limited = _key(srv, "--name", "slow", "--rpm", "2", admin_key=admin)
    first = _post(srv, limited)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert int(first.headers["x-ratelimit-remaining-requests"]) <= 1
    assert _post(srv, limited).status_code == 200
    third = _post(srv, limited)
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(third.headers["Retry-After"]) >= 1
    assert third.headers["x-ratelimit-remaining-requests"] == "0"


def test_budget_is_429_insufficient_quota(guarded: tuple[ServerProcess, str]) -> None:
    srv, admin = guarded
    capped = _key(srv, "--name", "capped", "--budget", "5", admin_key=admin)
    assert _post(srv, capped).status_code == 200  # ~30+ tokens at $1 each: over budget after this one
    listed = json.loads(srv.cli("--api-key", admin, "keys", "ls", "--json").stdout)
    key_id = next(k["id"] for k in listed if k["name"] == "capped")
    shown = srv.cli("--api-key", admin, "keys", "show", key_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["spend_usd"] > 5, shown.stdout
    over = _post(srv, capped)
    assert over.status_code == 429 and over.json()["error"]["code"] == "insufficient_quota"


def test_a_public_address_without_keys_is_refused(tmp_path: Path) -> None:
    env = {"SUPEROLLAMA_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "superollama.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--insecure" in done.stderr
