"""The OpenAI Responses API of a running server, through the official ``openai`` SDK: the bundled
SmolLM2 on llama.cpp for text, streaming and stored responses; a scripted OpenAI-compatible connection
(tests/e2e/scripted_standin.py) for function calls, whose answers are known in advance."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.scripted_standin import Gateway

MODEL = "smollm2:135m"
TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway.running(tmp_path_factory.mktemp("home")) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0, timeout=300)


def test_create_with_instructions_and_message_input(client: OpenAI) -> None:
    out = client.responses.create(
        model=MODEL, input="Say hello", instructions="Be brief.", max_output_tokens=8
    )
    assert out.object == "response" and out.id.startswith("resp_") and out.model == MODEL
    assert out.status in ("completed", "incomplete") and out.output_text
    assert out.output[0].type == "message" and out.instructions == "Be brief."
    assert out.usage is not None and out.usage.input_tokens > 0 and 0 < out.usage.output_tokens <= 8
    assert out.usage.total_tokens == out.usage.input_tokens + out.usage.output_tokens

    items: Any = [
        {"role": "user", "content": "My name is Ada."},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello Ada."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "What is my name?"}]},
    ]
    turns = client.responses.create(model=MODEL, input=items, max_output_tokens=4)
    assert turns.usage is not None and turns.usage.input_tokens > out.usage.input_tokens - 5


def test_previous_response_id_store_get_and_delete(client: OpenAI, gateway: Gateway) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=4)
    alone = client.responses.create(model=MODEL, input="What is my name?", max_output_tokens=4)
    chained = client.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id, max_output_tokens=4
    )
    assert chained.previous_response_id == first.id
    assert chained.usage is not None and alone.usage is not None and first.usage is not None
    # the first turn (question and answer) reached the model as history
    assert chained.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens

    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text

    unstored = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError) as chain_to_nothing:
        client.responses.create(
            model=MODEL, input="Hi", previous_response_id=unstored.id, max_output_tokens=2
        )
    assert chain_to_nothing.value.body["param"] == "previous_response_id"  # type: ignore[index]

    deleted = httpx.delete(
        f"{gateway.url}/v1/responses/{first.id}",
        headers={"Authorization": f"Bearer {gateway.key}"},
        timeout=30,
    )
    assert deleted.json() == {"id": first.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(first.id)

    # a stored response belongs to its key: another key cannot see it
    other = gateway.server.cli("--api-key", gateway.key, "keys", "create", "--name", "other")
    assert other.returncode == 0, other.stderr
    stranger = OpenAI(base_url=gateway.url + "/v1", api_key=other.stdout.strip(), max_retries=0)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(alone.id)


def test_stream_semantic_events_in_order(client: OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Say hello", max_output_tokens=6) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    head = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    tail = [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds[:4] == head and kinds[-4:-1] == tail
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    final = events[-1].response  # type: ignore[union-attr]
    assert text and done.text == text and final.output_text == text
    assert final.usage is not None and final.usage.output_tokens > 0

    stored = client.responses.retrieve(final.id)  # a streamed response is stored too
    assert stored.output_text == text


def test_function_calls_through_a_connection(client: OpenAI, gateway: Gateway) -> None:
    out = client.responses.create(model=gateway.tools_model, input="Paris", tools=[TOOL])
    (call,) = out.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.status == "completed"
    sent = gateway.standin.bodies("POST", "/v1/chat/completions")[-1]
    assert sent["tools"][0]["function"]["parameters"] == TOOL["parameters"]

    answer = client.responses.create(
        model=gateway.tools_model,
        previous_response_id=out.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[TOOL],
    )
    assert answer.output_text == "Result: sunny"
    sent_messages = gateway.standin.bodies("POST", "/v1/chat/completions")[-1]["messages"]
    assert sent_messages[-2]["tool_calls"][0]["id"] == call.call_id  # the stored call, from the chain
    assert sent_messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}

    with client.responses.stream(model=gateway.tools_model, input="Rome", tools=[TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) == 3 and json.loads("".join(deltas)) == {"city": "Rome"}
    kinds = [e.type for e in events]
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output[0].type == "function_call" and json.loads(final.output[0].arguments) == {
        "city": "Rome"
    }


def test_errors_in_openai_shape(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="no-such-model", input="Hi")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=MODEL, input=[{"type": "bogus"}])  # type: ignore[list-item]
    assert bad.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_every_worker_serves_and_finds_stored_responses(fresh_server: ServerProcess) -> None:
    """``serve --workers 2``: the replica serves both translated APIs itself, and a response stored by one
    worker is found by the other (the shared registry)."""
    fresh_server.env["SUPEROLLAMA_WORKERS"] = "2"
    srv = fresh_server.start()
    seen: dict[str, str] = {}  # worker → a response it stored

    def one_more() -> bool:
        with httpx.Client(base_url=srv.url, timeout=300) as fresh:  # a new connection: either worker
            body = {"model": MODEL, "input": "Hi", "max_output_tokens": 2}
            made = fresh.post("/v1/responses", json=body)
            assert made.status_code == 200, made.text
            seen.setdefault(made.headers["x-superollama-worker"], made.json()["id"])
            sent = fresh.post(
                "/v1/messages",
                json={"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
            )
            assert sent.status_code == 200 and sent.json()["type"] == "message"
        return len(seen) == 2

    assert wait_until(one_more, timeout=240, interval=0), f"one worker answered every time: {seen}"
    for stored in seen.values():
        for _ in range(4):
            with httpx.Client(base_url=srv.url, timeout=60) as fresh:
                got = fresh.get(f"/v1/responses/{stored}")
            assert got.status_code == 200 and got.json()["id"] == stored
