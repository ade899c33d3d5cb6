"""An Ollama connection through a running gateway: ``superollama connect ollama URL --name box``.

No real Ollama binary can be installed here, so the server connected to is the faithful local stand-in of
tests/e2e/standins.py (Ollama's documented ``/api/*`` and OpenAI-compatible ``/v1/*`` routes); the first
test holds it to the official ``ollama`` Python client, which validates every answer it parses.

Through the gateway: discovery as ``box/NAME:TAG``, the OpenAI SDK (chat, streamed and not, embeddings),
the official ``ollama`` client against *our* ``/api/chat``, ``/api/generate`` and ``/api/embed`` for
``box/…`` models (translated to OpenAI for the backend and back), images passed through, a server that
goes away (503 with a clear message, events) and comes back, and the models on that server managed
through its API: ``superollama connections pull | copy | delete``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest
from openai import OpenAI
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.standins import OllamaStandIn, StandIn, reply_for, vector_for
from tests.e2e.test_connections import ledger_row

DIMS = OllamaStandIn.EMBED_DIMS


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("gw-ollama")
    srv = ServerProcess(home, SUPEROLLAMA_BUNDLED_MODEL="false", SUPEROLLAMA_CONNECTION_REFRESH="0.3").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def box(gateway: ServerProcess) -> Iterator[OllamaStandIn]:
    """A fresh Ollama stand-in connected as ``box``; disconnected and stopped afterwards."""
    server = OllamaStandIn().start()
    try:
        result = gateway.cli("connect", "ollama", server.url, "--name", "box")
        assert result.returncode == 0, result.stderr
        assert "healthy" in result.stdout
        yield server
    finally:
        gateway.cli("disconnect", "box")
        server.stop()


def _connection(gateway: ServerProcess, name: str) -> dict[str, Any]:
    items = gateway.admin("GET", "/admin/v1/connections").json()["connections"]
    return next(c for c in items if c["name"] == name)


def _close(got: Any, want: list[list[float]]) -> bool:
    return len(got) == len(want) and all(
        len(g) == len(w) and all(abs(a - b) < 1e-6 for a, b in zip(g, w, strict=True))
        for g, w in zip(got, want, strict=True)
    )


def _openai(gateway: ServerProcess) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=30)


def test_the_stand_in_satisfies_the_official_ollama_client() -> None:
    server = OllamaStandIn().start()
    try:
        assert httpx.get(server.url + "/").text == "Ollama is running"
        client = ollama.Client(host=server.url, timeout=10)
        assert {m.model for m in client.list().models} == {"llama3.2:1b", "nomic-embed-text:latest"}
        out = client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}])
        assert out.message.content == reply_for("hi") and out.done and out.eval_count == 3
        parts = list(
            client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}], stream=True)
        )
        assert "".join(p.message.content or "" for p in parts) == reply_for("hi") and parts[-1].done
        assert client.generate(model="llama3.2:1b", prompt="x").response == reply_for("x")
        assert client.embed(model="nomic-embed-text", input="a").embeddings == [vector_for("a", DIMS)]
        progress = list(client.pull("qwen2.5:0.5b", stream=True))
        assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
        assert any(p.total and p.completed == p.total for p in progress)
        assert client.copy("qwen2.5:0.5b", "mine").status == "success"
        assert client.delete("qwen2.5:0.5b").status == "success"
        assert "mine:latest" in {m.model for m in client.list().models}
        with pytest.raises(ollama.ResponseError) as info:
            client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 404
        with pytest.raises(ollama.ResponseError, match="file does not exist"):
            client.pull("no-such-model")
    finally:
        server.stop()


def test_models_are_discovered_and_serve_the_openai_sdk(gateway: ServerProcess, box: OllamaStandIn) -> None:
    client = _openai(gateway)
    models = {m.id: m.owned_by for m in client.models.list()}
    assert models == {"box/llama3.2:1b": "box", "box/nomic-embed-text:latest": "box"}

    out = client.chat.completions.create(
        model="box/llama3.2:1b", messages=[{"role": "user", "content": "hello there"}]
    )
    assert out.choices[0].message.content == reply_for("hello there")
    assert out.model == "llama3.2:1b"  # the backend's answer, relayed as it is
    assert out.usage is not None and out.usage.completion_tokens == 4
    assert box.bodies("POST", "/v1/chat/completions")[-1]["model"] == "llama3.2:1b"

    stream = client.chat.completions.create(
        model="box/llama3.2:1b",
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply_for("hello there")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    plain = list(
        client.chat.completions.create(
            model="box/llama3.2:1b", messages=[{"role": "user", "content": "x"}], stream=True, max_tokens=2
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == "You said: "
    assert plain[-1].choices[0].finish_reason == "length"

    emb = client.embeddings.create(model="box/nomic-embed-text:latest", input=["a", "b"])
    assert _close([d.embedding for d in emb.data], [vector_for("a", DIMS), vector_for("b", DIMS)])
    assert box.bodies("POST", "/v1/embeddings")[-1]["model"] == "nomic-embed-text:latest"

    with pytest.raises(openai.BadRequestError, match="does not support chat"):
        client.chat.completions.create(
            model="box/nomic-embed-text:latest", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="box/nope:1b", messages=[{"role": "user", "content": "x"}])


def test_the_ollama_client_against_our_api_for_connection_models(
    gateway: ServerProcess, box: OllamaStandIn
) -> None:
    """An Ollama client talking to an Ollama connection is relayed to the server's own /api/* untranslated:
    what only Ollama's API carries (options, keep_alive, think, images as sent) reaches the server as is."""
    client = ollama.Client(host=gateway.url, timeout=30)
    listed = {m.model for m in client.list().models}  # our /api/tags lists connection models too
    assert {"box/llama3.2:1b", "box/nomic-embed-text:latest"} <= listed
    messages = [{"role": "user", "content": "how are you"}]
    raw = httpx.post(
        f"{gateway.url}/api/chat",
        json={
            "model": "box/llama3.2:1b",
            "messages": messages,
            "stream": False,
            "keep_alive": "7m",
            "think": False,
        },
        timeout=30,
    )
    assert raw.status_code == 200, raw.text
    out = ollama.ChatResponse.model_validate(raw.json())
    assert out.model == "box/llama3.2:1b"  # our name, not the server's
    assert out.message.role == "assistant" and out.message.content == reply_for("how are you")
    assert out.done and out.done_reason == "stop" and out.eval_count == 5 and out.prompt_eval_count == 3
    assert out.total_duration and out.total_duration > 0
    sent = box.bodies("POST", "/api/chat")[-1]  # the server's own API, the client's body as it was
    assert sent == {
        "model": "llama3.2:1b",
        "messages": messages,
        "stream": False,
        "keep_alive": "7m",
        "think": False,
    }
    assert not box.bodies("POST", "/v1/chat/completions")
    row = ledger_row(gateway, lambda r: r["request_id"] == raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 5)  # Ollama's own counts, metered
    assert row["connection"] == "box" and row["usage_estimated"] is False

    with httpx.stream(
        "POST", f"{gateway.url}/api/chat", json={"model": "box/llama3.2:1b", "messages": messages}, timeout=30
    ) as streamed_raw:
        assert streamed_raw.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in streamed_raw.iter_lines() if line]
        request_id = streamed_raw.headers["x-request-id"]
    parts = [ollama.ChatResponse.model_validate(line) for line in lines]
    assert "".join(p.message.content or "" for p in parts) == reply_for("how are you")
    assert parts[-1].done and not any(p.done for p in parts[:-1]) and parts[-1].eval_count == 5
    assert {p.model for p in parts} == {"box/llama3.2:1b"}
    row = ledger_row(gateway, lambda r: r["request_id"] == request_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 5)

    limited = client.chat(model="box/llama3.2:1b", messages=messages, options={"num_predict": 2})
    assert limited.message.content == "You said: " and limited.done_reason == "length"
    assert box.bodies("POST", "/api/chat")[-1]["options"] == {"num_predict": 2}

    generated = client.generate(model="box/llama3.2:1b", prompt="tell me")
    assert generated.response == reply_for("tell me") and generated.done and generated.context
    assert generated.model == "box/llama3.2:1b"
    assert box.bodies("POST", "/api/generate")[-1]["model"] == "llama3.2:1b"
    streamed = list(client.generate(model="box/llama3.2:1b", prompt="tell me", stream=True))
    assert "".join(p.response or "" for p in streamed) == reply_for("tell me")

    emb = client.embed(model="box/nomic-embed-text:latest", input=["one", "two"])
    assert _close(emb.embeddings, [vector_for("one", DIMS), vector_for("two", DIMS)])
    assert emb.model == "box/nomic-embed-text:latest"
    one = client.embed(model="box/nomic-embed-text", input="one")
    assert _close(one.embeddings, [vector_for("one", DIMS)])
    legacy = client.embeddings(model="box/nomic-embed-text", prompt="one")
    assert _close([list(legacy.embedding)], [vector_for("one", DIMS)])
    assert box.bodies("POST", "/api/embeddings")[-1] == {"model": "nomic-embed-text:latest", "prompt": "one"}

    image = base64.b64encode(b"\x89PNG\r\n\x1a\n-not-really-an-image").decode()
    seen = client.chat(
        model="box/llama3.2:1b", messages=[{"role": "user", "content": "what is this", "images": [image]}]
    )
    assert seen.message.content == reply_for("what is this [1 image(s)]")
    assert box.bodies("POST", "/api/chat")[-1]["messages"][0]["images"] == [image]  # bytes as sent

    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="box/nope", messages=messages)
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as info:  # the server's own refusal, in Ollama's shape
        client.chat(model="box/nomic-embed-text:latest", messages=messages)
    assert info.value.status_code == 400 and "does not support chat" in info.value.error


def test_a_server_that_goes_away_is_503_then_comes_back(gateway: ServerProcess, box: OllamaStandIn) -> None:
    client = _openai(gateway)
    ollama_client = ollama.Client(host=gateway.url, timeout=30)
    messages: Any = [{"role": "user", "content": "hi"}]
    assert client.chat.completions.create(model="box/llama3.2:1b", messages=messages).choices

    box.go_down()
    assert wait_until(lambda: not _connection(gateway, "box")["healthy"], timeout=10)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="box/llama3.2:1b", messages=messages)
    assert info.value.status_code == 503
    assert "connection 'box' is unavailable" in info.value.message and "/api/tags" in info.value.message
    with pytest.raises(ollama.ResponseError) as down:
        ollama_client.chat(model="box/llama3.2:1b", messages=messages)
    assert down.value.status_code == 503 and "connection 'box' is unavailable" in down.value.error
    assert "box/llama3.2:1b" in [m.id for m in client.models.list()]  # still listed while down

    box.come_back()
    assert wait_until(lambda: _connection(gateway, "box")["healthy"], timeout=10)
    out = client.chat.completions.create(model="box/llama3.2:1b", messages=messages)
    assert out.choices[0].message.content == reply_for("hi")
    events = gateway.admin("GET", "/admin/v1/events", params={"target": "box"}).json()["events"]
    actions = [e["action"] for e in events]
    assert actions[:3] == ["connection.healthy", "connection.unhealthy", "connection.add"]


def test_models_on_the_server_are_pulled_copied_and_deleted_through_its_api(
    gateway: ServerProcess, box: OllamaStandIn
) -> None:
    client = _openai(gateway)
    result = gateway.cli("connections", "pull", "box", "qwen2.5:0.5b")
    assert result.returncode == 0, result.stderr
    assert "pulling manifest" in result.stdout and "pulled box/qwen2.5:0.5b" in result.stdout
    assert box.bodies("POST", "/api/pull")[-1]["model"] == "qwen2.5:0.5b"
    # the model list is refreshed at once, not at the next health check
    assert "qwen2.5:0.5b" in _connection(gateway, "box")["models"]
    out = client.chat.completions.create(
        model="box/qwen2.5:0.5b", messages=[{"role": "user", "content": "q"}]
    )
    assert out.choices[0].message.content == reply_for("q")

    # the admin API streams Ollama's own progress lines, then our final one
    with httpx.stream(
        "POST",
        gateway.url + "/admin/v1/connections/box/pull",
        json={"model": "box/smollm2:135m"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[0] == {"status": "pulling manifest"}
    assert any(line.get("digest", "").startswith("sha256:") and line.get("total") for line in lines)
    assert lines[-1]["status"] == "success" and lines[-1]["model"] == "box/smollm2:135m"
    assert "smollm2:135m" in lines[-1]["connection"]["models"]

    result = gateway.cli("connections", "copy", "box", "box/qwen2.5:0.5b", "qwen-mine")
    assert result.returncode == 0, result.stderr
    assert box.bodies("POST", "/api/copy")[-1] == {"source": "qwen2.5:0.5b", "destination": "qwen-mine"}
    assert "box/qwen-mine:latest" in [m.id for m in client.models.list()]

    result = gateway.cli("connections", "delete", "box", "qwen2.5:0.5b")
    assert result.returncode == 0, result.stderr
    assert "qwen2.5:0.5b" not in box.models and "qwen2.5:0.5b" not in _connection(gateway, "box")["models"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="box/qwen2.5:0.5b", messages=[{"role": "user", "content": "q"}])
    assert gateway.admin("DELETE", "/admin/v1/connections/box/models/qwen-mine:latest").status_code == 200

    # failures say what the server said, with the right status
    result = gateway.cli("connections", "pull", "box", "no-such-model")
    assert result.returncode == 1 and "file does not exist" in result.stderr
    missing = gateway.admin("DELETE", "/admin/v1/connections/box/models/ghost:1b")
    assert missing.status_code == 404 and "ghost:1b" in missing.json()["error"]["message"]
    copy = gateway.admin(
        "POST", "/admin/v1/connections/box/copy", json={"source": "ghost", "destination": "x"}
    )
    assert copy.status_code == 404 and "connection 'box'" in copy.json()["error"]["message"]
    unknown = gateway.admin("POST", "/admin/v1/connections/nobody/pull", json={"model": "x"})
    assert (
        unknown.status_code == 404 and "connection 'nobody' not found" in unknown.json()["error"]["message"]
    )
    bad = gateway.admin("POST", "/admin/v1/connections/box/pull", json={})
    assert bad.status_code == 400 and "'model'" in bad.json()["error"]["message"]

    events = gateway.admin("GET", "/admin/v1/events", params={"target": "box"}).json()["events"]
    done = {(e["action"], e["result"]) for e in events}
    assert {("connection.pull", "ok"), ("connection.copy", "ok"), ("connection.delete", "ok")} <= done
    assert ("connection.pull", "failed") in done


def test_kinds_that_cannot_manage_models_get_a_clear_400(gateway: ServerProcess) -> None:
    server = StandIn().start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert gateway.cli("connect", "openai", url, "--name", "plainai").returncode == 0
        result = gateway.cli("connections", "pull", "plainai", "echo-2")
        assert result.returncode == 1
        assert "is a openai server: it cannot pull models" in result.stderr and "only ollama" in result.stderr
        for method, path, body in (
            ("POST", "/admin/v1/connections/plainai/pull", {"model": "x", "stream": False}),
            ("POST", "/admin/v1/connections/plainai/copy", {"source": "echo-1", "destination": "y"}),
            ("DELETE", "/admin/v1/connections/plainai/models/echo-1", None),
        ):
            answer = gateway.admin(method, path, json=body)
            assert answer.status_code == 400, (path, answer.text)
            assert "only ollama connections can" in answer.json()["error"]["message"]
    finally:
        gateway.cli("disconnect", "plainai")
        server.stop()


def test_refreshing_an_unknown_connection_is_404(gateway: ServerProcess) -> None:
    server = StandIn().start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert gateway.cli("connect", "openai", url, "--name", "other").returncode == 0
        answer = gateway.admin("POST", "/admin/v1/connections/nobody/refresh")
        assert answer.status_code == 404 and "connection 'nobody' not found" in answer.text
    finally:
        gateway.cli("disconnect", "other")
        server.stop()


def test_our_ollama_api_shows_pulls_copies_and_deletes_connection_models(
    gateway: ServerProcess, box: OllamaStandIn
) -> None:
    """The official ``ollama`` client against *our* ``/api/show|pull|copy|delete`` for ``box/…`` names:
    each is answered by the connected server, and routing follows a change at once."""
    client = ollama.Client(host=gateway.url, timeout=30)
    openai_client = _openai(gateway)

    shown = client.show("box/llama3.2:1b")
    assert box.bodies("POST", "/api/show")[-1]["model"] == "llama3.2:1b"  # the server's own name
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.details.parameter_size == "1.2B" and shown.details.quantization_level == "Q8_0"
    assert shown.modelinfo is not None and shown.modelinfo["llama.context_length"] == 131072
    assert shown.capabilities == ["completion", "tools"] and shown.template == OllamaStandIn.TEMPLATE
    assert shown.modelfile is not None and "# FROM box/llama3.2:1b\n" in shown.modelfile  # our name …
    assert "FROM /root/.ollama/models/blobs/sha256-" in shown.modelfile  # … not the file's path
    assert shown.parameters is not None and "temperature" in shown.parameters
    assert shown.modified_at is not None
    embedder = client.show("box/nomic-embed-text")  # untagged, as the server resolves it
    assert embedder.capabilities == ["embedding"]
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("box/ghost:1b")
    assert missing.value.status_code == 404 and "ghost:1b" in missing.value.error
    assert "connection 'box'" in missing.value.error

    # pull: the server's progress as it streams, "success" once routing has the model
    progress = list(client.pull("box/qwen2.5:0.5b", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert [p.status for p in progress].count("success") == 1
    assert any(p.digest and p.total and p.completed == p.total for p in progress)
    assert box.bodies("POST", "/api/pull")[-1]["model"] == "qwen2.5:0.5b"
    assert "box/qwen2.5:0.5b" in {m.model for m in client.list().models}
    out = client.chat(model="box/qwen2.5:0.5b", messages=[{"role": "user", "content": "pulled"}])
    assert out.message.content == reply_for("pulled")
    assert client.pull("box/smollm2:135m").status == "success"  # stream: false
    assert "box/smollm2:135m" in {m.id for m in openai_client.models.list()}
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        list(client.pull("box/no-such-model", stream=True))
    with pytest.raises(ollama.ResponseError) as unpulled:
        client.pull("box/no-such-model")
    assert unpulled.value.status_code == 404 and "file does not exist" in unpulled.value.error

    # copy within the connection: the server copies under its own names
    assert client.copy("box/qwen2.5:0.5b", "box/qwen-mine").status == "success"
    assert box.bodies("POST", "/api/copy")[-1] == {"source": "qwen2.5:0.5b", "destination": "qwen-mine"}
    assert "box/qwen-mine:latest" in {m.model for m in client.list().models}
    copied = client.chat(model="box/qwen-mine", messages=[{"role": "user", "content": "copied"}])
    assert copied.message.content == reply_for("copied")
    with pytest.raises(ollama.ResponseError) as ghost:
        client.copy("box/ghost:1b", "box/other")
    assert ghost.value.status_code == 404 and "ghost:1b" in ghost.value.error

    # delete: gone from the server and from routing at once
    assert client.delete("box/qwen2.5:0.5b").status == "success"
    assert box.bodies("DELETE", "/api/delete")[-1]["model"] == "qwen2.5:0.5b"
    assert "qwen2.5:0.5b" not in box.models
    assert "box/qwen2.5:0.5b" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as gone:
        client.chat(model="box/qwen2.5:0.5b", messages=[{"role": "user", "content": "x"}])
    assert gone.value.status_code == 404
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(
            model="box/qwen2.5:0.5b", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(ollama.ResponseError) as twice:
        client.delete("box/qwen2.5:0.5b")
    assert twice.value.status_code == 404

    events = gateway.admin("GET", "/admin/v1/events", params={"target": "box"}).json()["events"]
    done = {(e["action"], e["result"], e["actor"]) for e in events}
    assert {("connection.pull", "ok", "api"), ("connection.copy", "ok", "api")} <= done
    assert ("connection.delete", "ok", "api") in done


def test_a_copy_stays_on_its_connection(gateway: ServerProcess, box: OllamaStandIn) -> None:
    other = StandIn().start()
    try:
        url = f"http://127.0.0.1:{other.port}"
        assert gateway.cli("connect", "openai", url, "--name", "elsewhere").returncode == 0
        for source, destination, says in (
            ("box/llama3.2:1b", "mine:1b", "must be named 'box/NEW-NAME'"),
            ("box/llama3.2:1b", "elsewhere/mine", "cannot copy 'box/llama3.2:1b' to connection 'elsewhere'"),
            ("smollm2:135m", "box/mine", "cannot copy local model 'smollm2:135m' onto connection 'box'"),
        ):
            answer = httpx.post(
                gateway.url + "/api/copy", json={"source": source, "destination": destination}, timeout=30
            )
            assert answer.status_code == 400, answer.text
            assert answer.json() == {"error": answer.json()["error"]} and says in answer.json()["error"]
        assert box.bodies("POST", "/api/copy") == []  # nothing reached the server
        assert set(box.models) == {"llama3.2:1b", "nomic-embed-text:latest"}
    finally:
        gateway.cli("disconnect", "elsewhere")
        other.stop()


def test_show_of_an_unreachable_connection_is_503(gateway: ServerProcess, box: OllamaStandIn) -> None:
    client = ollama.Client(host=gateway.url, timeout=30)
    box.go_down()
    try:
        with pytest.raises(ollama.ResponseError) as down:
            client.show("box/llama3.2:1b")
        assert down.value.status_code == 503
        assert "connection 'box' is unavailable" in down.value.error and "/api/show" in down.value.error
        with pytest.raises(ollama.ResponseError) as no_copy:
            client.copy("box/llama3.2:1b", "box/x")
        assert no_copy.value.status_code == 503 and "connection 'box' is unavailable" in no_copy.value.error
    finally:
        box.come_back()


def test_connection_model_management_needs_an_admin_key(tmp_path: Any) -> None:
    """With keys in use, pull, copy and delete of a connection's models need an admin key (as for local
    models); show does not."""
    home = tmp_path / "gw"
    home.mkdir()
    server = OllamaStandIn().start()
    srv = ServerProcess(home, SUPEROLLAMA_BUNDLED_MODEL="false").start()
    try:
        assert srv.cli("connect", "ollama", server.url, "--name", "box").returncode == 0
        admin = srv.cli("keys", "create", "--name", "ops", "--role", "admin").stdout.strip()
        user = srv.cli("--api-key", admin, "keys", "create", "--name", "app").stdout.strip()
        as_user = ollama.Client(host=srv.url, timeout=30, headers={"Authorization": f"Bearer {user}"})
        as_admin = ollama.Client(host=srv.url, timeout=30, headers={"Authorization": f"Bearer {admin}"})
        assert as_user.show("box/llama3.2:1b").details is not None
        for refused in (
            lambda: as_user.copy("box/llama3.2:1b", "box/stolen"),
            lambda: as_user.delete("box/llama3.2:1b"),
            lambda: as_user.pull("box/qwen2.5:0.5b"),
        ):
            with pytest.raises(ollama.ResponseError) as info:
                refused()
            assert info.value.status_code == 403
        assert server.bodies("POST", "/api/copy") == [] and server.bodies("POST", "/api/pull") == []
        assert set(server.models) == {"llama3.2:1b", "nomic-embed-text:latest"}
        assert as_admin.copy("box/llama3.2:1b", "box/kept").status == "success"
        assert as_admin.delete("box/kept").status == "success"
        assert as_admin.pull("box/qwen2.5:0.5b").status == "success"
    finally:
        srv.stop()
        server.stop()


def test_our_ollama_api_on_an_openai_connection(gateway: ServerProcess) -> None:
    """An OpenAI-compatible server is described from its ``/v1/models`` entry; it cannot pull, copy or
    delete models, and says so in Ollama's shape."""
    server = StandIn().start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert gateway.cli("connect", "openai", url, "--name", "plainai").returncode == 0
        client = ollama.Client(host=gateway.url, timeout=30)
        shown = client.show("plainai/echo-1")
        assert shown.capabilities == ["completion"] and shown.template == ""
        assert shown.details is not None and shown.details.format == "" and shown.details.family == ""
        assert shown.modelinfo is not None and shown.modelinfo["general.name"] == "echo-1"
        assert shown.modelfile is not None and "FROM plainai/echo-1\n" in shown.modelfile
        assert shown.modified_at is not None
        with pytest.raises(ollama.ResponseError) as missing:
            client.show("plainai/echo-2")
        assert missing.value.status_code == 404 and "echo-2" in missing.value.error
        for action, call in (
            ("copy", lambda: client.copy("plainai/echo-1", "plainai/echo-copy")),
            ("delete", lambda: client.delete("plainai/echo-1")),
            ("pull", lambda: client.pull("plainai/echo-2")),
            ("pull", lambda: list(client.pull("plainai/echo-2", stream=True))),
        ):
            with pytest.raises(ollama.ResponseError) as info:
                call()
            assert info.value.status_code == 400, action
            assert f"is a openai server: it cannot {action} models" in info.value.error
            assert "only ollama connections can" in info.value.error
        assert "plainai/echo-1" in {m.model for m in client.list().models}
    finally:
        gateway.cli("disconnect", "plainai")
        server.stop()
