"""Connections: a real llama.cpp server we did not start through the gateway, and a local stand-in of an
OpenAI-compatible server whose health we can flip, reached through ``superollama connect``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
from openai import OpenAI
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.standins import OllamaStandIn, StandIn, reply_for

from superollama.core import Artifact, InstanceSpec
from superollama.runtimes import LlamaCppRuntime


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

    # a client that does not ask for usage sees none, yet the ledger has the server's own counts
    greedy: Any = {"messages": [{"role": "user", "content": "Count to ten"}], "max_tokens": 6, "seed": 7}
    whole = client.chat.completions.create(model="lab/smollm2-ext", temperature=0, **greedy)
    assert whole.usage is not None
    raw = client.chat.completions.with_raw_response.create(
        model="lab/smollm2-ext", temperature=0, stream=True, **greedy
    )
    streamed = list(raw.parse())
    assert streamed and all(c.usage is None and c.choices for c in streamed)
    assert "".join(c.choices[0].delta.content or "" for c in streamed)
    row = ledger_row(gateway, lambda r: r["request_id"] == raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )
    assert row["connection"] == "lab" and row["usage_estimated"] is False

    shown = ollama.Client(host=gateway.url, timeout=30).show("lab/smollm2-ext")
    assert shown.capabilities == ["completion"] and shown.modelinfo is not None
    assert shown.modelinfo["general.name"] == "smollm2-ext"
    assert shown.modelfile is not None and "FROM lab/smollm2-ext\n" in shown.modelfile
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


def test_no_stream_usage_never_sends_stream_options_and_estimates(gateway: ServerProcess) -> None:
    """An OpenAI-compatible server (here Ollama's ``/v1``, the stand-in recording what it receives)
    connected twice: as is, every stream asks it for usage; with ``--no-stream-usage`` none does, and
    the ledger row says its tokens are estimated. Either way the client sees what it asked for."""
    server = OllamaStandIn().start()
    try:
        assert gateway.cli("connect", "openai", server.url + "/v1", "--name", "asked").returncode == 0
        done = gateway.cli("connect", "openai", server.url + "/v1", "--name", "strict", "--no-stream-usage")
        assert done.returncode == 0, done.stderr
        listed = gateway.cli("connections", "ls").stdout
        assert "STREAM USAGE" in listed and "estimated" in listed and "asked" in listed
        shown = gateway.cli("connections", "show", "strict").stdout
        assert "stream usage" in shown and "estimated" in shown and "strict/llama3.2:1b" in shown
        as_json = json.loads(gateway.cli("connections", "show", "strict", "--json").stdout)
        assert as_json["stream_usage"] is False and as_json["options"] == {"stream_usage": False}
        assert _connection(gateway, "asked")["stream_usage"] is True

        client = OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=30)
        messages: Any = [{"role": "user", "content": "hello there"}]
        reply = reply_for("hello there")

        def sent() -> list[Any]:
            return server.bodies("POST", "/v1/chat/completions")

        for name in ("asked", "strict"):
            chunks = list(
                client.chat.completions.create(model=f"{name}/llama3.2:1b", messages=messages, stream=True)
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply
            assert all(c.choices and c.usage is None for c in chunks)  # no usage chunk: not asked for
        assert sent()[-2]["stream_options"] == {"include_usage": True} and "stream_options" not in sent()[-1]
        asked = ledger_row(gateway, lambda r: r["connection"] == "asked")
        assert (asked["prompt_tokens"], asked["completion_tokens"], asked["usage_estimated"]) == (2, 4, False)
        strict = ledger_row(gateway, lambda r: r["connection"] == "strict")
        assert strict["usage_estimated"] is True and strict["stream"] is True
        assert strict["prompt_tokens"] > 0 and strict["completion_tokens"] == (len(reply) + 3) // 4

        # a client that asks for usage itself gets it, from the server, on either connection
        chunks = list(
            client.chat.completions.create(
                model="strict/llama3.2:1b",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        assert sent()[-1]["stream_options"] == {"include_usage": True}

        # the Ollama API's streams to that connection do not send stream_options either
        parts = list(
            ollama.Client(host=gateway.url, timeout=30).chat(
                model="strict/llama3.2:1b", messages=messages, stream=True
            )
        )
        assert "".join(p.message.content or "" for p in parts) == reply
        assert "stream_options" not in sent()[-1] and sent()[-1]["stream"] is True
        row = ledger_row(gateway, lambda r: r["connection"] == "strict" and r["protocol"] == "ollama")
        assert row["usage_estimated"] is True and row["completion_tokens"] == (len(reply) + 3) // 4
    finally:
        server.stop()


def test_bad_connection_options_are_refused(gateway: ServerProcess, stand_in: StandIn) -> None:
    url = f"http://127.0.0.1:{stand_in.port}"
    for options, says in (
        ({"stream_usage": "no"}, "connection option 'stream_usage' must be a bool"),
        ({"streaming": False}, "unknown connection option 'streaming' (known: stream_usage)"),
        (["stream_usage"], "'options': must be object or null"),  # the published schema says so first
    ):
        body = {"kind": "openai", "url": url, "name": "opts", "options": options}
        answer = gateway.admin("POST", "/admin/v1/connections", json=body)
        assert answer.status_code == 400 and says in answer.json()["error"]["message"], answer.text
    assert gateway.admin("GET", "/admin/v1/connections/opts").status_code == 404


def _ledger(server: ServerProcess) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = server.admin("GET", "/admin/v1/usage", params={"by": "request"}).json()[
        "rows"
    ]
    return rows


def ledger_row(server: ServerProcess, match: Any) -> dict[str, Any]:
    """The usage ledger's row of the one request ``match`` picks (written just after the response)."""
    found: list[dict[str, Any]] = []

    def look() -> bool:
        found[:] = [r for r in _ledger(server) if match(r)]
        return bool(found)

    assert wait_until(look, timeout=10)
    assert len(found) == 1, found
    return found[0]


def _connection(server: ServerProcess, name: str) -> dict[str, Any]:
    items = server.admin("GET", "/admin/v1/connections").json()["connections"]
    return next(c for c in items if c["name"] == name)
