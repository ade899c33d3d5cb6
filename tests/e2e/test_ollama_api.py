"""The official ``ollama`` Python client against a running server with the real SmolLM2 on llama.cpp.

Every ``/api/*`` endpoint, stream and not. Vision cannot run here (no GGUF with an mmproj is installed):
``images`` ⇄ ``image_url`` is checked at the wire level in tests/unit/test_wire_ollama.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import ollama
import pytest
from tests.e2e.conftest import ServerProcess, wait_until

from superollama.app import bundled_model_path

MODEL = "smollm2:135m"
SHORT = {"num_predict": 6, "temperature": 0, "seed": 1}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def _instance(server: ServerProcess) -> dict[str, object] | None:
    found = [i for i in server.instances() if i["version"] == MODEL]
    return found[0] if found else None


def _ndjson(response: httpx.Response) -> Iterator[dict[str, object]]:
    for line in response.iter_lines():
        assert line, "NDJSON has no blank lines"
        yield json.loads(line)


def test_version_and_root(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/api/version").json()["version"]
    assert httpx.head(server.url + "/").status_code == 200
    assert httpx.get(server.url + "/").status_code == 200


def test_tags_list_the_bundled_model(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    model = models[MODEL]
    assert model.details is not None and model.details.format == "gguf"
    assert model.details.family == "llama" and model.details.parameter_size == "135M"
    assert model.details.quantization_level == "Q4_1"
    assert model.digest is not None and len(model.digest) == 64 and ":" not in model.digest
    assert model.size and model.size > 50_000_000
    assert isinstance(model.modified_at, datetime)


def test_chat_non_stream(client: ollama.Client) -> None:
    out = client.chat(MODEL, messages=[{"role": "user", "content": "Say hello"}], stream=False, options=SHORT)
    assert out.message.role == "assistant" and out.message.content
    assert out.done and out.done_reason in ("stop", "length")
    assert out.eval_count is not None and 0 < out.eval_count <= 6
    assert out.prompt_eval_count and out.prompt_eval_count > 5
    assert out.total_duration and out.eval_duration and out.total_duration >= out.eval_duration > 0
    assert out.load_duration is not None and out.prompt_eval_duration is not None


def test_chat_stream(client: ollama.Client, server: ServerProcess) -> None:
    parts = list(
        client.chat(
            MODEL, messages=[{"role": "user", "content": "Count to five"}], options=SHORT, stream=True
        )
    )
    assert len(parts) >= 3
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content or "" for p in parts).strip()
    last = parts[-1]
    assert last.done_reason == "length" and last.eval_count == 6 and last.total_duration
    with httpx.stream(
        "POST",
        server.url + "/api/chat",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
    ) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = list(_ndjson(response))
    assert lines[-1]["done"] is True and "eval_duration" in lines[-1]


def test_chat_tools_are_relayed(client: ollama.Client) -> None:
    """Tools reach llama.cpp; SmolLM2's template has no tool syntax, so it answers in text (the tool-call
    translation both ways is pinned in the golden tests)."""
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    out = client.chat(MODEL, messages=messages, tools=[tool], options=SHORT, think=True)
    assert out.done and out.message.role == "assistant"
    assert out.message.content or out.message.tool_calls


def test_generate_non_stream_is_deterministic_with_seed(client: ollama.Client) -> None:
    first = client.generate(MODEL, "Why is the sky blue?", options=SHORT)
    again = client.generate(MODEL, "Why is the sky blue?", options=SHORT)
    assert first.response and first.response == again.response
    assert first.done_reason == "length" and first.eval_count == 6
    assert first.context and all(isinstance(t, int) for t in first.context)


def test_generate_stream(client: ollama.Client) -> None:
    parts = list(client.generate(MODEL, "Once upon a time", stream=True, options=SHORT))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.response or "" for p in parts).strip()
    assert parts[-1].eval_count == 6 and parts[-1].context


def test_generate_raw_system_and_template(client: ollama.Client) -> None:
    """``raw`` skips the chat template; ``system`` replaces SmolLM2's default system prompt; a request's
    Go-like ``template`` renders the prompt itself; an unsupported one is a clear 400."""
    templated = client.generate(MODEL, "Hi", options=SHORT)
    raw = client.generate(MODEL, "Hi", raw=True, options=SHORT)
    system = client.generate(MODEL, "Hi", system="Be brief.", options=SHORT)
    custom = client.generate(MODEL, "Hi", template="{{ .Prompt }}", options=SHORT)
    assert raw.prompt_eval_count == custom.prompt_eval_count == 1
    assert raw.context is None and custom.context
    assert templated.prompt_eval_count and system.prompt_eval_count
    assert system.prompt_eval_count < templated.prompt_eval_count  # the default system prompt is longer
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(MODEL, "Hi", template="{{ range .Messages }}{{ end }}")
    assert info.value.status_code == 400 and "template" in info.value.error


def test_generate_format_json_and_schema(client: ollama.Client) -> None:
    opts = {"num_predict": 32, "temperature": 0}
    out = client.generate(MODEL, "Give a JSON object with a key a", format="json", options=opts)
    assert out.response.lstrip().startswith("{")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    out = client.generate(MODEL, "A JSON object with a number n", format=schema, options=opts)
    assert out.response.lstrip().startswith("{")
    if out.done_reason == "stop":  # not cut by num_predict: the grammar made it valid
        assert isinstance(json.loads(out.response)["n"], int)


def test_generate_context_round_trip(client: ollama.Client) -> None:
    first = client.generate(MODEL, "My name is Ada.", options=SHORT)
    assert first.context
    second = client.generate(MODEL, "What is my name?", context=first.context, options=SHORT)
    assert second.context and second.prompt_eval_count
    assert second.context[: len(first.context)] == list(first.context)
    assert second.prompt_eval_count > len(first.context)


def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    out = client.embed(MODEL, input=["hello world", "goodbye"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 576
    assert out.prompt_eval_count and out.total_duration
    one = client.embed(MODEL, input="hello world")
    assert one.embeddings[0] == pytest.approx(out.embeddings[0], rel=1e-4, abs=1e-5)
    cut = client.embed(MODEL, input="hello world", dimensions=8).embeddings[0]
    assert len(cut) == 8 and math.isclose(sum(x * x for x in cut), 1.0, rel_tol=1e-4)
    legacy = client.embeddings(MODEL, prompt="hello world")
    assert len(legacy.embedding) == 576


def test_embed_truncate(client: ollama.Client) -> None:
    """llama.cpp refuses an input longer than its batch; ``truncate`` (the default) cuts it to fit."""
    long = "hello " * 1500
    assert len(client.embed(MODEL, input=long).embeddings[0]) == 576
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(MODEL, input=long, truncate=False)
    assert info.value.status_code == 400


def test_show(client: ollama.Client) -> None:
    out = client.show(MODEL)
    assert out.details is not None and out.details.format == "gguf"
    assert out.modelinfo is not None and out.modelinfo["general.architecture"] == "llama"
    assert out.capabilities and "completion" in out.capabilities
    assert out.template and "im_start" in out.template
    assert out.modelfile and "FROM " in out.modelfile
    with pytest.raises(ollama.ResponseError) as info:
        client.show("nope:1b")
    assert info.value.status_code == 404


def test_ps_and_keep_alive(client: ollama.Client, server: ServerProcess) -> None:
    client.generate(MODEL, "Hi", options=SHORT)
    (running,) = [m for m in client.ps().models if m.model == MODEL]
    assert running.size_vram == 0 and running.size and running.expires_at
    left = running.expires_at - datetime.now(UTC)
    assert timedelta(minutes=3) < left <= timedelta(minutes=5, seconds=5)  # the 5 min default

    client.generate(MODEL, "Hi", options=SHORT, keep_alive=-1)
    (running,) = [m for m in client.ps().models if m.model == MODEL]
    assert running.expires_at and running.expires_at.year > 2200  # forever
    client.generate(MODEL, "Hi", options=SHORT, keep_alive="10m")
    (running,) = [m for m in client.ps().models if m.model == MODEL]
    assert running.expires_at and running.expires_at - datetime.now(UTC) > timedelta(minutes=9)

    out = client.generate(MODEL, "", keep_alive=0)
    assert out.done and out.done_reason == "unload"
    assert _instance(server) is None and client.ps().models == []
    out = client.generate(MODEL, "")
    assert out.done and out.done_reason == "load" and _instance(server) is not None
    chat = client.chat(MODEL, messages=[], keep_alive=0)
    assert chat.done_reason == "unload" and _instance(server) is None


def test_keep_alive_zero_unloads_after_the_request(client: ollama.Client, server: ServerProcess) -> None:
    out = client.chat(MODEL, messages=[{"role": "user", "content": "Hi"}], options=SHORT, keep_alive=0)
    assert out.message.content
    assert wait_until(lambda: _instance(server) is None, timeout=30)
    out = client.embed(MODEL, input="hi", keep_alive="1m")  # loads again on demand
    assert out.embeddings and _instance(server) is not None


def test_pull_copy_delete(client: ollama.Client, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = bundled_model_path()
    assert path is not None
    name = "smollm2-135m-instruct.q4_1:latest"
    statuses = [p.status for p in client.pull(str(path), stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert any(s and s.startswith("pulling ") and s != "pulling manifest" for s in statuses)
    assert client.pull(path.as_uri(), stream=False).status == "success"  # the same files: up to date
    assert name in [m.model for m in client.list().models]

    assert client.copy(name, "mycopy:v1").status == "success"
    assert client.show("mycopy:v1").details.format == "gguf"  # type: ignore[union-attr]
    with pytest.raises(ollama.ResponseError) as info:
        client.copy("nope:1b", "other:v1")
    assert info.value.status_code == 404
    out = client.generate("mycopy:v1", "Hi", options=SHORT, keep_alive=0)
    assert out.model == "mycopy:v1" and out.response

    assert client.delete("mycopy:v1").status == "success"
    assert client.delete(name).status == "success"
    models = [m.model for m in client.list().models]
    assert "mycopy:v1" not in models and name not in models and MODEL in models
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("mycopy:v1")
    assert info.value.status_code == 404 and "not found" in info.value.error

    missing = str(tmp_path_factory.mktemp("pull") / "missing.gguf")
    with pytest.raises(ollama.ResponseError) as info:
        client.pull(missing, stream=False)
    assert info.value.status_code == 404
    with pytest.raises(ollama.ResponseError, match="no such file"):
        list(client.pull(missing, stream=True))  # the error is the stream's last line


def test_errors_in_ollama_shape(client: ollama.Client, server: ServerProcess) -> None:
    for call in (
        lambda: client.chat("nope:1b", messages=[{"role": "user", "content": "Hi"}]),
        lambda: client.generate("nope:1b", "Hi", stream=False),
        lambda: client.embed("nope:1b", input="x"),
    ):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 404 and info.value.error == "model 'nope:1b' not found"
    for raw in (b"{not json", b"", b"[1]"):
        response = httpx.post(server.url + "/api/chat", content=raw)
        assert response.status_code == 400 and isinstance(response.json()["error"], str)
    for body in (
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": MODEL, "prompt": "x", "options": {"temperature": "hot"}},
        {"model": MODEL, "prompt": "x", "keep_alive": "soon"},
        {"model": MODEL, "prompt": "x", "format": "yaml"},
        {"model": MODEL, "prompt": "x", "context": "1,2"},
    ):
        response = httpx.post(server.url + "/api/generate", json=body)
        assert response.status_code == 400, body
        assert set(response.json()) == {"error"}
    response = httpx.get(server.url + "/api/nothing-here")
    assert response.status_code == 404 and set(response.json()) == {"error"}


def test_client_disconnect_stops_the_request(server: ServerProcess) -> None:
    body = {"model": MODEL, "prompt": "Write a long story", "options": {"num_predict": 400}}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as response:
        lines = response.iter_lines()  # kept: a dropped iterator closes the connection at once
        assert json.loads(next(lines))["done"] is False
        inst = _instance(server)
        assert inst and inst["in_flight"] == 1
    # 400 tokens take far longer than this: the request is gone because the client went away
    assert wait_until(lambda: (_instance(server) or {}).get("in_flight") == 0, timeout=5)


def test_backend_dying_mid_stream_ends_with_an_error_line(server: ServerProcess) -> None:
    body = {"model": MODEL, "prompt": "Write a long story", "options": {"num_predict": 400}}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["done"] is False
        inst = _instance(server)
        assert inst is not None
        os.kill(int(inst["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        rest = [json.loads(line) for line in lines]
    assert rest and set(rest[-1]) == {"error"} and "failed" in rest[-1]["error"]
