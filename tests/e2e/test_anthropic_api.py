"""The Anthropic Messages API of a running server, through the official ``anthropic`` SDK: the bundled
SmolLM2 on llama.cpp for text, streaming, stop sequences and token counts; a scripted OpenAI-compatible
connection (tests/e2e/scripted_standin.py) for tool use, whose answers are known in advance."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from tests.e2e.conftest import wait_until
from tests.e2e.scripted_standin import Gateway

MODEL = "smollm2:135m"
HELLO: Any = [{"role": "user", "content": "Say hello"}]
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway.running(tmp_path_factory.mktemp("home")) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> anthropic.Anthropic:
    """The SDK sends the key as ``x-api-key`` and an ``anthropic-version`` header."""
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0, timeout=300)


def test_create_plain_system_and_multi_turn(client: anthropic.Anthropic) -> None:
    out = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert out.type == "message" and out.role == "assistant" and out.model == MODEL
    assert out.id.startswith("msg_") and out.content[0].type == "text" and out.content[0].text
    assert out.stop_reason in ("end_turn", "max_tokens")
    assert out.usage.input_tokens > 0 and 0 < out.usage.output_tokens <= 8

    system = client.messages.create(model=MODEL, max_tokens=4, system="You answer in French.", messages=HELLO)
    assert system.usage.input_tokens > 0
    turns: Any = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello Ada."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ]
    multi = client.messages.create(model=MODEL, max_tokens=4, messages=turns)
    assert multi.usage.input_tokens > out.usage.input_tokens  # the earlier turns reached the model

    limited = client.messages.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Write a long story about a dragon"}]
    )
    assert limited.stop_reason == "max_tokens" and limited.usage.output_tokens == 2


def test_stop_sequences_end_the_answer_before_the_sequence(client: anthropic.Anthropic) -> None:
    count: Any = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    whole = client.messages.create(model=MODEL, max_tokens=30, messages=count, extra_body={"temperature": 0})
    text = whole.content[0].text  # type: ignore[union-attr]
    assert "3" in text, text  # the model counts; the stop sequence below is in its answer
    cut = client.messages.create(
        model=MODEL, max_tokens=30, messages=count, stop_sequences=["3"], extra_body={"temperature": 0}
    )
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == "3"
    assert cut.content[0].text == text[: text.index("3")]  # type: ignore[union-attr]
    assert cut.usage.input_tokens == whole.usage.input_tokens  # counted by the model's tokenizer
    assert 0 < cut.usage.output_tokens < whole.usage.output_tokens

    with client.messages.stream(
        model=MODEL, max_tokens=30, messages=count, stop_sequences=["3"], extra_body={"temperature": 0}
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text[: text.index("3")] and final.stop_reason == "stop_sequence"


def test_stream_event_sequence_and_text(client: anthropic.Anthropic, gateway: Gateway) -> None:
    with client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events if e.type not in ("text",)]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    deltas = "".join(
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert deltas and final.content[0].text == deltas  # type: ignore[union-attr]
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0 and final.stop_reason

    # on the wire: every event has its `event:` line and a ping follows message_start
    raw = httpx.post(
        gateway.url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 3, "messages": HELLO, "stream": True},
        headers={"x-api-key": gateway.key, "anthropic-version": "2023-06-01"},
        timeout=300,
    )
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    names = [line[7:] for line in raw.text.splitlines() if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"] and names[-1] == "message_stop"
    assert raw.text.count("data: ") == len(names) and raw.headers["request-id"]


def test_tool_use_and_tool_result(client: anthropic.Anthropic, gateway: Gateway) -> None:
    ask: Any = [{"role": "user", "content": "Paris"}]
    out = client.messages.create(model=gateway.tools_model, max_tokens=50, tools=[WEATHER_TOOL], messages=ask)
    assert out.stop_reason == "tool_use"
    (call,) = [b for b in out.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    sent = gateway.standin.bodies("POST", "/v1/chat/completions")[-1]
    assert sent["tools"][0]["function"]["parameters"] == WEATHER_TOOL["input_schema"]

    follow: Any = [
        *ask,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}],
        },
    ]
    answer = client.messages.create(
        model=gateway.tools_model, max_tokens=50, tools=[WEATHER_TOOL], messages=follow
    )
    assert answer.content[0].text == "Result: sunny, 21 C" and answer.stop_reason == "end_turn"  # type: ignore[union-attr]
    sent = gateway.standin.bodies("POST", "/v1/chat/completions")[-1]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == call.id and sent[-1] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": "sunny, 21 C",
    }

    with client.messages.stream(
        model=gateway.tools_model, max_tokens=50, tools=[WEATHER_TOOL], messages=ask
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    fragments = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(fragments) == 3 and "".join(fragments) == '{"city": "Paris"}'
    start = next(e for e in events if e.type == "content_block_start")
    assert start.content_block.type == "tool_use" and start.content_block.input == {}
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Paris"}  # type: ignore[union-attr]


def test_count_tokens_uses_the_model_tokenizer(client: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "How many tokens is this?"}]
    counted = client.messages.count_tokens(model=MODEL, system="Be brief.", messages=messages)
    used = client.messages.create(model=MODEL, max_tokens=1, system="Be brief.", messages=messages)
    assert counted.input_tokens == used.usage.input_tokens > 0
    raw = client.messages.with_raw_response.count_tokens(model=MODEL, messages=messages)
    assert raw.headers["x-superollama-token-count"] == "tokenizer"


def test_errors_in_anthropic_shape(client: anthropic.Anthropic, gateway: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.post("/v1/messages", body={"model": MODEL, "messages": HELLO}, cast_to=object)
    assert bad.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=3, messages=HELLO)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "robot", "content": "x"}])  # type: ignore[typeddict-item]

    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()
    image: Any = [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
            ],
        }
    ]
    with pytest.raises(anthropic.BadRequestError) as text_only:
        client.messages.create(model=MODEL, max_tokens=3, messages=image)
    assert "image" in text_only.value.body["error"]["message"]  # type: ignore[index]

    nobody = anthropic.Anthropic(base_url=gateway.url, api_key="so-not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        nobody.messages.create(model=MODEL, max_tokens=3, messages=HELLO)
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    bare = httpx.post(gateway.url + "/v1/messages", json={"model": MODEL, "max_tokens": 3, "messages": HELLO})
    assert bare.status_code == 401 and bare.json()["error"]["type"] == "authentication_error"


def test_usage_rows_per_key(client: anthropic.Anthropic, gateway: Gateway) -> None:
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=3, messages=HELLO)
    out, request_id = raw.parse(), raw.headers["request-id"]

    def row() -> dict[str, Any] | None:
        return next((r for r in gateway.usage_rows() if r["request_id"] == request_id), None)

    assert wait_until(lambda: row() is not None, timeout=20)
    found = row()
    assert found is not None and found["key_prefix"] and gateway.key.startswith(found["key_prefix"])
    assert found["protocol"] == "anthropic" and found["status"] == 200 and found["model"] == MODEL
    assert (found["prompt_tokens"], found["completion_tokens"]) == (
        out.usage.input_tokens,
        out.usage.output_tokens,
    )


def test_images_reach_a_backend_as_openai_image_parts(client: anthropic.Anthropic, gateway: Gateway) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\1" * 16).decode()
    content: Any = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
        {"type": "text", "text": "What is this?"},
    ]
    out = client.messages.create(
        model=gateway.tools_model, max_tokens=20, messages=[{"role": "user", "content": content}]
    )
    assert out.content[0].text == "You said: What is this?"  # type: ignore[union-attr]
    sent = gateway.standin.bodies("POST", "/v1/chat/completions")[-1]["messages"][-1]
    assert sent == {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
            {"type": "text", "text": "What is this?"},
        ],
    }
    # A URL image is fetched by the gateway, never by the backend; an inner address is refused (SSRF)
    # unless SUPEROLLAMA_IMAGE_FETCH_PRIVATE allows it (tests/e2e/test_vision_api.py fetches one).
    inner: Any = [{"type": "image", "source": {"type": "url", "url": f"{gateway.url}/cat.png"}}]
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model=gateway.tools_model, max_tokens=5, messages=[{"role": "user", "content": inner}]
        )
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "not a public address" in refused.value.body["error"]["message"]  # type: ignore[index]


def test_rate_limit_is_429_rate_limit_error(gateway: Gateway) -> None:
    made = gateway.server.cli("--api-key", gateway.key, "keys", "create", "--name", "slow", "--rpm", "1")
    assert made.returncode == 0, made.stderr
    slow = anthropic.Anthropic(base_url=gateway.url, api_key=made.stdout.strip(), max_retries=0, timeout=300)
    slow.messages.count_tokens(model=MODEL, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as limited:
        slow.messages.count_tokens(model=MODEL, messages=HELLO)
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(limited.value.response.headers["retry-after"]) >= 1
