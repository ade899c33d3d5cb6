"""The official OpenAI SDK against a running server with the real SmolLM2 on llama.cpp."""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import pytest
from openai import OpenAI
from tests.e2e.conftest import ServerProcess

MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)


def test_models_lists_the_bundled_model(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_non_stream(client: OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=16, seed=1
    )
    assert out.object == "chat.completion"
    assert out.model == MODEL
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content
    assert out.usage is not None and out.usage.prompt_tokens > 0 and 0 < out.usage.completion_tokens <= 16


def test_chat_stream_with_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five"}],
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3 and text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_chat_parameters_pass_through(client: OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_completion_tokens=5,
        n=2,
        stop=["\n\n"],
        logprobs=True,
        top_logprobs=2,
        temperature=0.5,
    )
    assert len(out.choices) == 2
    assert out.choices[0].logprobs is not None and out.choices[0].logprobs.content


def test_json_response_format(client: OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a JSON object with a key a"}],
        response_format={"type": "json_object"},
        max_tokens=30,
    )
    assert (out.choices[0].message.content or "").lstrip().startswith("{")


def test_tools_are_relayed(client: OpenAI) -> None:
    """Tools reach llama.cpp; SmolLM2's template has no tool syntax, so the model answers in text.
    A malformed tool is a 400 naming the field (llama.cpp itself would answer 500)."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,  # type: ignore[arg-type]
        tool_choice="auto",
        max_tokens=10,
    )
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            tools=[{"type": "function"}],  # type: ignore[list-item]
            max_tokens=4,
        )
    assert info.value.status_code == 400 and info.value.body["param"] == "tools.[0].function"  # type: ignore[index]


def test_completions(client: OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8)
    assert out.choices[0].text
    assert out.usage is not None and out.usage.completion_tokens > 0


def test_embeddings_float_base64_and_tokens(client: OpenAI, server: ServerProcess) -> None:
    out = client.embeddings.create(model=MODEL, input=["hello world", "goodbye"])  # SDK asks for base64
    assert len(out.data) == 2 and len(out.data[0].embedding) == 576
    floats = client.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(out.data[0].embedding, rel=1e-5, abs=1e-6)
    raw = httpx.post(
        server.url + "/v1/embeddings", json={"model": MODEL, "input": "hi", "encoding_format": "base64"}
    ).json()
    vector = base64.b64decode(raw["data"][0]["embedding"])
    assert len(struct.unpack(f"<{len(vector) // 4}f", vector)) == 576
    tokens = client.embeddings.create(model=MODEL, input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert len(tokens.data) == 2


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope:1b", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"  # type: ignore[index]


def test_disabled_model_is_404_and_hidden(client: OpenAI, server: ServerProcess) -> None:
    result = server.cli("disable", MODEL)
    assert result.returncode == 0, result.stderr
    try:
        assert MODEL not in [m.id for m in client.models.list()]
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
        assert info.value.code == "model_not_found"
        assert "disabled" in info.value.message
        assert server.instances() == []  # its instance drained and stopped
    finally:
        assert server.cli("enable", MODEL).returncode == 0
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert out.choices[0].message.content is not None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages.[0].role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "x"}, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"model": 42, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_invalid_fields_are_400_with_param(
    server: ServerProcess, body: dict[str, object], param: str
) -> None:
    response = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"\xff\xfe"])
def test_malformed_json_is_400(server: ServerProcess, raw: bytes) -> None:
    response = httpx.post(
        server.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_body_over_limit_is_413(server: ServerProcess) -> None:
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
    response = httpx.post(server.url + "/v1/chat/completions", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_unknown_route_is_openai_404(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/v1/nothing-here")
    assert response.status_code == 404
    assert "error" in response.json()


def test_embeddings_bad_input_is_400(server: ServerProcess) -> None:
    for body in (
        {"model": MODEL, "input": []},
        {"model": MODEL, "input": [1, "a"]},
        {"model": MODEL, "input": "x", "encoding_format": "int8"},
    ):
        response = httpx.post(server.url + "/v1/embeddings", json=body)
        assert response.status_code == 400, body
