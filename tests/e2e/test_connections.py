"""Connections: a real llama.cpp server we did not start through the gateway, and a local stand-in of an
OpenAI-compatible server whose health we can flip, reached through ``superollama connect``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from openai import OpenAI
from tests.e2e.conftest import ServerProcess, wait_until

from superollama.core import Artifact, InstanceSpec
from superollama.runtimes import LlamaCppRuntime


class StandIn:
    """A minimal OpenAI-compatible server on loopback (/v1/models, /v1/chat/completions) in a thread."""

    def __init__(self) -> None:
        self.down = False
        self.auth: list[str | None] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _models(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        if self.down:
            return web.Response(status=503, text="maintenance")
        return web.json_response({"object": "list", "data": [{"id": "echo-1", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        body = await request.json()
        text = body["messages"][-1]["content"]
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text[::-1]},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> StandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def llamacpp_upstream(smollm2_gguf: Path, tmp_path: Path) -> Iterator[str]:
    """A real llama.cpp server (the runtime's worker) that the gateway knows only by its URL."""
    runtime = LlamaCppRuntime(tmp_path / "logs", ctx=2048, parallel=2)
    spec = InstanceSpec("ext-1", "smollm2-ext", Artifact("smollm2-ext", "gguf", smollm2_gguf), "llamacpp")
    loop = asyncio.new_event_loop()
    handle = loop.run_until_complete(runtime.start(spec))
    try:
        yield handle.endpoint.base_url
    finally:
        loop.run_until_complete(handle.stop(10))
        loop.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[ServerProcess]:
    home = tmp_path / "gw"
    home.mkdir()
    srv = ServerProcess(
        home,
        SUPEROLLAMA_BUNDLED_MODEL="false",
        SUPEROLLAMA_CONNECTION_REFRESH="0.3",
        LAB_KEY="sk-from-env",
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_openai_connection_to_a_real_llamacpp_server(gateway: ServerProcess, llamacpp_upstream: str) -> None:
    result = gateway.cli("connect", "openai", llamacpp_upstream + "/v1", "--name", "lab")
    assert result.returncode == 0, result.stderr
    assert "lab/smollm2-ext" in result.stdout and "healthy" in result.stdout

    client = OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=60)
    models = {m.id: m.owned_by for m in client.models.list()}
    assert models == {"lab/smollm2-ext": "lab"}
    out = client.chat.completions.create(
        model="lab/smollm2-ext", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert out.choices[0].message.content and out.usage and out.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="lab/smollm2-ext",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    emb = client.embeddings.create(model="lab/smollm2-ext", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 576

    listed = json.loads(gateway.cli("connections", "--json").stdout)
    assert listed[0]["name"] == "lab" and listed[0]["healthy"] and listed[0]["models"] == ["smollm2-ext"]
    assert gateway.cli("disconnect", "lab").returncode == 0
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="lab/smollm2-ext", messages=[{"role": "user", "content": "Hi"}])


def test_unhealthy_connection_is_503_and_recovers(gateway: ServerProcess, stand_in: StandIn) -> None:
    url = f"http://127.0.0.1:{stand_in.port}"
    assert gateway.cli("connect", "openai", url, "--name", "echo", "--api-key", "env:LAB_KEY").returncode == 0
    client = OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=30)

    def ask() -> str:
        out = client.chat.completions.create(
            model="echo/echo-1", messages=[{"role": "user", "content": "abc"}]
        )
        return out.choices[0].message.content or ""

    assert ask() == "cba"
    assert set(stand_in.auth) == {"Bearer sk-from-env"}  # the key is read from the server's environment

    stand_in.down = True
    assert wait_until(lambda: not _connection(gateway, "echo")["healthy"], timeout=10)
    with pytest.raises(openai.APIStatusError) as info:
        ask()
    assert (
        info.value.status_code == 503 and "echo" in info.value.message and "unavailable" in info.value.message
    )
    assert "echo/echo-1" in [m.id for m in client.models.list()]  # still listed while down

    stand_in.down = False
    assert wait_until(lambda: _connection(gateway, "echo")["healthy"], timeout=10)
    assert ask() == "cba"
    events = gateway.admin("GET", "/admin/v1/events", params={"target": "echo"}).json()["events"]
    assert [e["action"] for e in events][:3] == [
        "connection.healthy",
        "connection.unhealthy",
        "connection.add",
    ]


def test_a_literal_key_is_stored_encrypted(gateway: ServerProcess, stand_in: StandIn) -> None:
    url = f"http://127.0.0.1:{stand_in.port}/v1"
    result = gateway.cli("connect", "openai", url, "--name", "vault", "--api-key", "sk-literal-123")
    assert result.returncode == 0, result.stderr
    assert stand_in.auth[-1] == "Bearer sk-literal-123"
    with sqlite3.connect(gateway.home / "registry.db") as db:
        (secret,) = db.execute("select secret from connections where name = 'vault'").fetchone()
    assert secret.startswith("enc:") and "sk-literal-123" not in secret
    assert "sk-literal-123" not in gateway.cli("connections", "--json").stdout
    assert (gateway.home / "secret.key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["openai", "ftp://x"], "http"),
        (["openai", "http://127.0.0.1:9", "--name", "Bad Name"], "invalid connection name"),
    ],
)
def test_bad_connections_are_refused(gateway: ServerProcess, args: list[str], message: str) -> None:
    result = gateway.cli("connect", *args)
    assert result.returncode == 1 and message in result.stderr


def test_duplicate_connection_is_409(gateway: ServerProcess, stand_in: StandIn) -> None:
    body: dict[str, Any] = {"kind": "openai", "url": f"http://127.0.0.1:{stand_in.port}", "name": "dup"}
    assert gateway.admin("POST", "/admin/v1/connections", json=body).status_code == 201
    again = gateway.admin("POST", "/admin/v1/connections", json=body)
    assert again.status_code == 409 and "already exists" in again.json()["error"]["message"]


def _connection(server: ServerProcess, name: str) -> dict[str, Any]:
    items = server.admin("GET", "/admin/v1/connections").json()["connections"]
    return next(c for c in items if c["name"] == name)
