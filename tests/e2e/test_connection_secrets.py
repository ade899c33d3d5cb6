"""Secrets in a connection's URL (user info, ``?api-key=``) against a real ``superollama serve``, with one
worker and with ``--workers 2`` (requests through the replica): they are sent upstream (the stand-in
refuses anything else), stored encrypted, shown redacted by the CLI, the admin API and the events, never
written to the server's log, and a data-plane client's error names the connection and the kind of
failure, never the upstream's address."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from tests.databases import postgres_schema_sync, schema_url
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.standins import ThreadedServer
from tests.e2e.test_workers import pin

USER, PASSWORD, API_KEY = "bob", "TOPSECRETPW", "QUERYK3Y-42"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, API_KEY, BASIC.split()[1])


class GuardedUpstream(ThreadedServer):
    """An OpenAI-compatible server that answers only requests with bob's Basic credentials *and* the
    ``api-key`` query parameter (401 otherwise); ``answered`` counts the requests it let through."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: list[str] = []
        self.refused: list[str] = []

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != BASIC or request.query.get("api-key") != API_KEY:
            self.refused.append(request.path)
            return web.json_response({"error": {"message": "bad credentials"}}, status=401)
        self.answered.append(request.path)
        response: web.StreamResponse = await handler(request)
        return response

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "echo-1", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = body["messages"][-1]["content"]
        message = {"role": "assistant", "content": text[::-1]}
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )


@pytest.fixture
def upstream() -> Iterator[GuardedUpstream]:
    server = GuardedUpstream().start()
    try:
        yield server
    finally:
        server.stop()


def _no_secret(text: str, *also: str) -> None:
    for secret in (*SECRETS, *also):
        assert secret not in text, f"{secret!r} leaked in: {text[:2000]}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> Iterator[tuple[str, str]]:
    """``(registry URL, table prefix)``: a SQLite file, or a fresh schema of the test Postgres."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", ""
        return
    with postgres_schema_sync(pg_url, "test_secrets") as schema:
        yield schema_url(pg_url, schema), f'"{schema}".'


async def _sql(url: str, statement: str) -> list[Any]:
    engine = create_async_engine(url.split("?", maxsplit=1)[0])
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement))
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


@pytest.mark.parametrize("workers", [1, 2])
def test_url_secrets_are_sent_but_never_stored_shown_or_logged(
    tmp_path: Path, upstream: GuardedUpstream, workers: int, database: tuple[str, str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    db_url, prefix = database
    server = ServerProcess(
        home,
        SUPEROLLAMA_WORKERS=str(workers),
        SUPEROLLAMA_BUNDLED_MODEL="false",
        SUPEROLLAMA_CONNECTION_REFRESH="0.3",
        SUPEROLLAMA_DATABASE_URL=db_url,
    ).start(timeout=120)
    try:
        _check(server, upstream, replica=workers > 1)
    finally:
        server.stop()
    _no_secret(server.log.read_text())

    # stored: the public URL, and the secrets encrypted
    rows = asyncio.run(_sql(db_url, f"select url, url_secret, secret from {prefix}connections"))
    logged = asyncio.run(_sql(db_url, f"select detail from {prefix}events"))
    assert rows[0][0] == f"http://127.0.0.1:{upstream.port}/v1" and rows[0][1].startswith("enc:")
    _no_secret(repr(rows) + repr(logged))
    for path in (home / "logs").rglob("*"):
        if path.is_file():
            _no_secret(path.read_text(errors="replace"))


def _check(server: ServerProcess, upstream: GuardedUpstream, *, replica: bool) -> None:
    admin = server.cli("keys", "create", "--name", "ops", "--role", "admin").stdout.strip()
    made = server.cli("--api-key", admin, "keys", "create", "--name", "user")
    assert made.returncode == 0, made.stderr
    user = made.stdout.strip()
    address = f"127.0.0.1:{upstream.port}"

    def cli(*args: str) -> str:
        done = server.cli("--api-key", admin, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    def state() -> dict[str, Any]:
        return dict(json.loads(cli("connections", "show", "cred", "--json")))

    # connected while its server is down
    upstream.go_down()
    url = f"http://{USER}:{PASSWORD}@{address}/v1?api-key={API_KEY}"
    connected = cli("connect", "openai", url, "--name", "cred")
    _no_secret(connected)
    shown_url = f"http://***@{address}/v1?api-key=***"
    assert shown_url in connected and "unavailable" in connected

    upstream.come_back()
    assert wait_until(lambda: state()["healthy"], timeout=20)
    assert upstream.refused == []  # every request it got carried the credentials

    # the data plane sends them, from this worker (the replica with --workers 2) and the primary
    bearer = {"Authorization": f"Bearer {user}"}
    http = pin(server.url, 1, bearer) if replica else httpx.Client(base_url=server.url, headers=bearer)
    chat = {"model": "cred/echo-1", "messages": [{"role": "user", "content": "abc"}]}
    with contextlib.closing(http):
        before = upstream.answered.count("/v1/chat/completions")
        answer = http.post("/v1/chat/completions", json=chat, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "cba"
        ollama = http.post("/api/chat", json={**chat, "stream": False}, timeout=30)
        assert ollama.status_code == 200 and ollama.json()["message"]["content"] == "cba", ollama.text
        assert upstream.answered.count("/v1/chat/completions") == before + 2
        assert upstream.refused == []

        # its server goes away: users learn which connection and what kind of failure, nothing more
        upstream.go_down()
        assert wait_until(lambda: not state()["healthy"], timeout=20)
        for path, body in (("/v1/chat/completions", chat), ("/api/chat", {**chat, "stream": False})):
            refused = http.post(path, json=body, timeout=30)
            assert refused.status_code == 503, refused.text
            assert "cred" in refused.text and "cannot connect" in refused.text
            _no_secret(refused.text, address, str(upstream.port), USER)

        upstream.come_back()
        assert wait_until(lambda: state()["healthy"], timeout=20)
        again = http.post("/v1/chat/completions", json=chat, timeout=30)
        assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == "cba"

    # shown redacted everywhere an operator looks
    for output in (
        cli("connections"),
        cli("connections", "ls"),
        cli("connections", "show", "cred"),
        cli("connections", "--json"),
        cli("events", "--json", "--target", "cred"),
    ):
        _no_secret(output)
    assert state()["url"] == shown_url
    headers = {"Authorization": f"Bearer {admin}"}
    listed = server.admin("GET", "/admin/v1/connections", headers=headers)
    assert listed.json()["connections"][0]["url"] == shown_url
    events = server.admin("GET", "/admin/v1/events", params={"target": "cred"}, headers=headers)
    actions = {e["action"]: e for e in events.json()["events"]}
    assert actions["connection.add"]["detail"]["url"] == shown_url
    assert "connection.unhealthy" in actions
    _no_secret(listed.text + events.text)
