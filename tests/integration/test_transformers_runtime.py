"""The transformers runtime against real models: SmolLM2 (HF safetensors derived from the real GGUF) for
chat and completions, all-MiniLM-L6-v2 for embeddings. One SmolLM2 and one MiniLM instance serve most
tests of this module; the failure and lifecycle tests start their own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import signal
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import pytest_asyncio
from tests.unit.test_json_guide import conforms
from tests.waiting import wait_until

from superollama.core import Artifact, InstanceHandle, InstanceRecord, InstanceSpec, InstanceState
from superollama.errors import ModelLoadFailed
from superollama.runtimes import TRANSFORMERS_WORKER, TransformersRuntime, is_our_process

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("hf_extra")]

CHAT = "smollm2:135m-hf"
EMBED = "all-minilm:l6-v2"
STOP_TIMEOUT = 10.0
PROMPT = [{"role": "user", "content": "Write one sentence about the sea."}]
CAT = [{"role": "user", "content": "Give me a JSON object describing a cat with a name and an age."}]
CAT_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer"},
        "colors": {"type": "array", "items": {"enum": ["black", "white", "orange"]}, "maxItems": 2},
        "indoor": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
    },
    "required": ["name", "age", "colors", "indoor"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 20}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def new_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def spec_for(path: Path, version: str = CHAT, **options: Any) -> InstanceSpec:
    return InstanceSpec(
        instance_id=new_id(),
        version=version,
        artifact=Artifact(name=version, format="safetensors", path=path),
        runtime="transformers",
        options=options,
    )


def workers_for(instance_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        live = proc.info["status"] != psutil.STATUS_ZOMBIE
        if live and TRANSFORMERS_WORKER in cmdline and instance_id in cmdline:
            found.append(proc)
    return found


def make_runtime(log_dir: Path, **kwargs: Any) -> TransformersRuntime:
    return TransformersRuntime(log_dir, threads=2, ready_timeout=240, stop_timeout=STOP_TIMEOUT, **kwargs)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chat_handle(
    smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InstanceHandle]:
    runtime = make_runtime(tmp_path_factory.mktemp("chat-logs"))
    handle = await runtime.start(spec_for(smollm2_hf))
    yield handle
    await handle.stop(STOP_TIMEOUT)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embed_handle(
    hf_extra: None, minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InstanceHandle]:
    runtime = make_runtime(tmp_path_factory.mktemp("embed-logs"))
    handle = await runtime.start(spec_for(minilm_dir, EMBED))
    yield handle
    await handle.stop(STOP_TIMEOUT)


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=240)) as session:
        yield session


async def post(http: aiohttp.ClientSession, handle: InstanceHandle, path: str, body: Any) -> tuple[int, Any]:
    async with http.post(f"{handle.endpoint.base_url}{path}", json=body) as resp:
        return resp.status, await resp.json()


async def stream_events(
    http: aiohttp.ClientSession, handle: InstanceHandle, path: str, body: Any
) -> list[Any]:
    """Every SSE ``data:`` payload of a streamed request, ``[DONE]`` included as the string."""
    events: list[Any] = []
    async with http.post(f"{handle.endpoint.base_url}{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def chat(http: aiohttp.ClientSession, handle: InstanceHandle, **fields: Any) -> dict[str, Any]:
    status, body = await post(
        http, handle, "/v1/chat/completions", {"model": CHAT, "messages": PROMPT, **fields}
    )
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def test_health_models_and_a_greedy_chat(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    ep = chat_handle.endpoint
    assert (ep.provider, ep.served_name) == ("openai", CHAT)
    assert is_our_process(chat_handle.pid, chat_handle.instance_id, module=TRANSFORMERS_WORKER)
    async with http.get(f"{ep.base_url}/health") as resp:
        assert resp.status == 200
        assert (await resp.json())["task"] == "chat"
    async with http.get(f"{ep.base_url}/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == [CHAT]
    body = await chat(http, chat_handle, max_tokens=24, temperature=0)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == CHAT
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    use = body["usage"]
    assert use["prompt_tokens"] > 10  # the chat template's system prompt and the user turn
    assert 0 < use["completion_tokens"] <= 24
    assert use["total_tokens"] == use["prompt_tokens"] + use["completion_tokens"]


async def test_stream_matches_the_plain_answer_and_ends_with_usage(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    fields = {"max_tokens": 20, "temperature": 0}
    plain = await chat(http, chat_handle, **fields)
    body = {
        "model": CHAT,
        "messages": PROMPT,
        **fields,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = await stream_events(http, chat_handle, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    chunks, usage_chunk = events[:-2], events[-2]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in [*chunks, usage_chunk]}) == 1
    assert all(c["usage"] is None for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == plain["usage"]


async def test_the_official_openai_client_streams_from_the_worker(chat_handle: InstanceHandle) -> None:
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=f"{chat_handle.endpoint.base_url}/v1", api_key="unused")
    try:
        stream = await client.chat.completions.create(
            model=CHAT,
            messages=PROMPT,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(parts).strip()
        assert usage is not None and 0 < usage.completion_tokens <= 8
        done = await client.completions.create(model=CHAT, prompt="The sea is", max_tokens=4, temperature=0)
        assert done.choices[0].text and done.usage is not None and done.usage.completion_tokens == 4
    finally:
        await client.close()


async def test_stop_strings_cut_the_text_stream_or_not(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    full = (await chat(http, chat_handle, max_tokens=24, temperature=0))["choices"][0]["message"]["content"]
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[2]  # a stop string in the middle of the greedy answer
    expected = full[: full.index(stop)]
    body = await chat(http, chat_handle, max_tokens=24, temperature=0, stop=[stop, "never-there"])
    assert body["choices"][0]["message"]["content"] == expected
    assert body["choices"][0]["finish_reason"] == "stop"
    events = await stream_events(
        http,
        chat_handle,
        "/v1/chat/completions",
        {"messages": PROMPT, "max_tokens": 24, "temperature": 0, "stop": stop, "stream": True},
    )
    chunks = [e for e in events if e != "[DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_max_tokens_and_max_completion_tokens(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        body = await chat(http, chat_handle, temperature=0, **{field: 3})
        assert body["usage"]["completion_tokens"] == 3
        assert body["choices"][0]["finish_reason"] == "length"


async def test_a_seed_makes_sampling_reproducible(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    async def sample(seed: int) -> str:
        body = await chat(http, chat_handle, max_tokens=8, temperature=1.0, top_p=0.95, seed=seed)
        return str(body["choices"][0]["message"]["content"])

    first = await sample(1234)
    assert await sample(1234) == first
    others = {await sample(seed) for seed in (1, 2)}
    assert others - {first}, "two other seeds gave the same sample"


async def test_completions_plain_and_streamed(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    request = {"model": CHAT, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}
    status, body = await post(http, chat_handle, "/v1/completions", request)
    assert status == 200, body
    assert body["object"] == "text_completion"
    assert body["usage"]["completion_tokens"] == 5
    assert "Paris" in body["choices"][0]["text"]
    events = await stream_events(http, chat_handle, "/v1/completions", {**request, "stream": True})
    chunks = [e for e in events if e != "[DONE]"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == body["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_json_object_mode_answers_one_json_object(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    free = await chat(http, chat_handle, messages=CAT, max_tokens=6, temperature=0)
    assert not free["choices"][0]["message"]["content"].startswith("{")  # left alone, it writes ```json
    body = await chat(
        http, chat_handle, messages=CAT, max_tokens=60, temperature=0, response_format={"type": "json_object"}
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"]), dict), choice
    assert body["usage"]["completion_tokens"] < 60


async def test_json_schema_output_conforms_plain_streamed_and_sampled(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "cat", "schema": CAT_SCHEMA, "strict": True}}
    plain = await chat(http, chat_handle, messages=CAT, max_tokens=80, temperature=0, response_format=fmt)
    text = plain["choices"][0]["message"]["content"]
    assert plain["choices"][0]["finish_reason"] == "stop", text
    assert conforms(json.loads(text), CAT_SCHEMA), text
    request = {"messages": CAT, "max_tokens": 80, "temperature": 0, "response_format": fmt, "stream": True}
    events = await stream_events(http, chat_handle, "/v1/chat/completions", request)
    chunks = [e for e in events if e != "[DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    for seed in (1, 2):
        sampled = await chat(
            http, chat_handle, messages=CAT, max_tokens=120, temperature=1.0, seed=seed, response_format=fmt
        )
        text = sampled["choices"][0]["message"]["content"]
        assert sampled["choices"][0]["finish_reason"] == "stop", text
        assert conforms(json.loads(text), CAT_SCHEMA), text


async def test_a_value_cut_by_max_tokens_ends_with_length(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    body = await chat(
        http, chat_handle, messages=CAT, max_tokens=4, temperature=0, response_format={"type": "json_object"}
    )
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"].startswith("{")


def _arguments_of(call: dict[str, Any], tool: dict[str, Any]) -> dict[str, Any]:
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == tool["function"]["name"]
    arguments = json.loads(call["function"]["arguments"])
    assert conforms(arguments, tool["function"]["parameters"]), arguments
    return dict(arguments)


async def test_required_and_named_tool_choices_return_valid_calls(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    body = await chat(
        http,
        chat_handle,
        messages=ASK_WEATHER,
        max_tokens=60,
        temperature=0,
        tools=[WEATHER],
        tool_choice="required",
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert "Paris" in _arguments_of(call, WEATHER)["city"]
    named = {"type": "function", "function": {"name": "get_time"}}
    body = await chat(
        http,
        chat_handle,
        messages=ASK_WEATHER,
        max_tokens=60,
        temperature=0,
        tools=[WEATHER, CLOCK],
        tool_choice=named,
    )
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    (call,) = body["choices"][0]["message"]["tool_calls"]
    _arguments_of(call, CLOCK)
    request = {
        "messages": ASK_WEATHER,
        "max_tokens": 60,
        "temperature": 0,
        "tools": [WEATHER, CLOCK],
        "tool_choice": "required",
        "stream": True,
    }
    events = await stream_events(http, chat_handle, "/v1/chat/completions", request)
    chunks = [e for e in events if e != "[DONE]"]
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    head = deltas[0]
    assert head["index"] == 0 and head["id"].startswith("call_") and head["function"]["arguments"] == ""
    tool = {"get_weather": WEATHER, "get_time": CLOCK}[head["function"]["name"]]
    streamed = {
        **head,
        "function": {**head["function"], "arguments": "".join(d["function"]["arguments"] for d in deltas)},
    }
    _arguments_of(streamed, tool)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


async def test_auto_tools_reach_the_prompt_and_answer_in_one_shape(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    bare = await chat(http, chat_handle, messages=ASK_WEATHER, max_tokens=1, temperature=0)
    none = await chat(
        http,
        chat_handle,
        messages=ASK_WEATHER,
        max_tokens=1,
        temperature=0,
        tools=[WEATHER],
        tool_choice="none",
    )
    assert none["usage"]["prompt_tokens"] == bare["usage"]["prompt_tokens"]
    body = await chat(http, chat_handle, messages=ASK_WEATHER, max_tokens=40, temperature=0, tools=[WEATHER])
    # SmolLM2's template ignores tools: the preamble that lists them makes the prompt longer.
    assert body["usage"]["prompt_tokens"] > bare["usage"]["prompt_tokens"] + 50
    choice = body["choices"][0]
    if choice["finish_reason"] == "tool_calls":
        for call in choice["message"]["tool_calls"]:
            _arguments_of(call, WEATHER)
    else:
        assert "tool_calls" not in choice["message"] and choice["message"]["content"]
    history = [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    after = await chat(http, chat_handle, messages=history, max_tokens=2, temperature=0, tools=[WEATHER])
    assert after["usage"]["prompt_tokens"] > body["usage"]["prompt_tokens"] + 20  # the call and its result


def _check_chat_logprobs(content: list[dict[str, Any]], top: int, text: str, *, greedy: bool) -> None:
    assert "".join(e["token"] for e in content) == text
    for entry in content:
        assert entry["logprob"] <= 0.0
        assert bytes(entry["bytes"]).decode() == entry["token"]
        alternatives = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(alternatives) == top
        assert alternatives == sorted(alternatives, reverse=True)
        assert all(a <= 0.0 for a in alternatives)
        if greedy:
            best = entry["top_logprobs"][0]
            assert (best["token"], best["logprob"]) == (
                entry["token"],
                pytest.approx(entry["logprob"], abs=1e-6),
            )


async def test_chat_logprobs_shape_and_streamed_equal_plain(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    fields = {"max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    plain = await chat(http, chat_handle, **fields)
    choice = plain["choices"][0]
    content = choice["logprobs"]["content"]
    assert choice["logprobs"]["refusal"] is None
    assert len(content) == plain["usage"]["completion_tokens"] == 8
    _check_chat_logprobs(content, 3, choice["message"]["content"], greedy=True)
    events = await stream_events(
        http, chat_handle, "/v1/chat/completions", {"messages": PROMPT, **fields, "stream": True}
    )
    chunks = [e for e in events if e != "[DONE]"]
    streamed = [entry for c in chunks for entry in (c["choices"][0]["logprobs"] or {}).get("content") or []]
    assert [e["token"] for e in streamed] == [e["token"] for e in content]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in content], abs=1e-5)
    for chunk in chunks:  # each chunk carries the logprobs of the text it adds
        lp = chunk["choices"][0]["logprobs"]
        added = chunk["choices"][0]["delta"].get("content") or ""
        assert "".join(e["token"] for e in (lp or {}).get("content") or []) == added
    guided = await chat(
        http,
        chat_handle,
        messages=CAT,
        max_tokens=10,
        temperature=0,
        logprobs=True,
        response_format={"type": "json_object"},
    )
    entries = guided["choices"][0]["logprobs"]["content"]
    assert entries[0]["token"] == "{" and all(
        e["logprob"] <= 0.0 and e["top_logprobs"] == [] for e in entries
    )


async def test_completions_keep_a_json_schema_too(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3}
    request = {"prompt": "Three prime numbers as a JSON list:", "max_tokens": 30, "temperature": 0}
    for extra in (
        {"json_schema": schema},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}},
    ):
        status, body = await post(http, chat_handle, "/v1/completions", {**request, **extra})
        assert status == 200, body
        text = body["choices"][0]["text"]
        assert body["choices"][0]["finish_reason"] == "stop" and conforms(json.loads(text), schema), text


async def test_completion_logprobs_legacy_shape(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    request = {"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "logprobs": 2}
    status, body = await post(http, chat_handle, "/v1/completions", request)
    assert status == 200, body
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"]
    assert (
        len(lp["tokens"])
        == len(lp["token_logprobs"])
        == len(lp["top_logprobs"])
        == len(lp["text_offset"])
        == 5
    )
    offsets = [0]
    for token in lp["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert lp["text_offset"] == offsets
    for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert logprob <= 0.0 and len(top) <= 2 and max(top, key=top.get) == token
    events = await stream_events(http, chat_handle, "/v1/completions", {**request, "stream": True})
    chunks = [e for e in events if e != "[DONE]" and e["choices"][0]["logprobs"]]
    assert [t for c in chunks for t in c["choices"][0]["logprobs"]["tokens"]] == lp["tokens"]
    assert [o for c in chunks for o in c["choices"][0]["logprobs"]["text_offset"]] == lp["text_offset"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": PROMPT, "n": 2}, "n"),
        (
            {"messages": PROMPT, "tools": [{"type": "function", "function": {"name": "a b"}}]},
            "tools[0].function.name",
        ),
        (
            {
                "messages": PROMPT,
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "x"}},
            },
            "tool_choice",
        ),
        ({"messages": PROMPT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (
            {
                "messages": PROMPT,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "s", "schema": {"type": "string", "format": "email"}},
                },
            },
            "response_format",
        ),
        ({"messages": []}, "messages"),
        ({"messages": PROMPT, "temperature": 5}, "temperature"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ],
    ids=[
        "n",
        "tool-name",
        "tool-choice",
        "top-logprobs",
        "unsupported-schema",
        "no-messages",
        "temperature",
        "image",
    ],
)
async def test_requests_it_cannot_honour_are_400s(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession, body: dict[str, Any], param: str
) -> None:
    status, err = await post(http, chat_handle, "/v1/chat/completions", body)
    assert status == 400
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["param"] == param
    if param == "response_format":
        assert "'format'" in err["error"]["message"]
    status, err = await post(http, chat_handle, "/v1/completions", {"prompt": "x", "logprobs": 6})
    assert (status, err["error"]["param"]) == (400, "logprobs")


async def test_bad_json_and_wrong_task_are_400s(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{chat_handle.endpoint.base_url}/v1/chat/completions", data=b"{nope") as resp:
        assert resp.status == 400
        assert "not valid JSON" in (await resp.json())["error"]["message"]
    status, err = await post(http, chat_handle, "/v1/embeddings", {"input": "x"})
    assert status == 400 and "serves chat" in err["error"]["message"]


async def test_a_client_that_disconnects_stops_its_generation(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    url = f"{chat_handle.endpoint.base_url}/v1/chat/completions"
    endless = {"messages": PROMPT, "max_tokens": 4000, "temperature": 1.0}

    async def follow_up_is_prompt() -> None:
        # 4000 tokens at ~10-20 tok/s would hold the model for minutes; a follow-up is served at once.
        started = time.monotonic()
        body = await chat(http, chat_handle, max_tokens=2, temperature=0)
        assert body["usage"]["completion_tokens"] == 2
        assert time.monotonic() - started < 20

    # The session closes at once: the connection drops mid-stream.
    async with aiohttp.ClientSession() as own, own.post(url, json={**endless, "stream": True}) as resp:
        assert resp.status == 200
        for _ in range(3):  # the role chunk, a blank line, the first generated text
            await resp.content.readline()
    await follow_up_is_prompt()

    sent = asyncio.Event()

    async def body_sent(*_: Any) -> None:
        sent.set()

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(body_sent)

    async def queued() -> bool:
        async with http.get(f"{chat_handle.endpoint.base_url}/health") as resp:
            return bool((await resp.json())["queued"])

    async with aiohttp.ClientSession(trace_configs=[trace]) as own:
        pending = asyncio.create_task(own.post(url, json=endless))
        await asyncio.wait_for(sent.wait(), 10)
        probe = asyncio.create_task(chat(http, chat_handle, max_tokens=2, temperature=0))
        await wait_until(queued, what="a request queued behind the endless one")
        assert not probe.done()  # it waits: the endless request holds the model now
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
        body = await asyncio.wait_for(probe, 20)  # the dropped request gave the model up
        assert body["usage"]["completion_tokens"] == 2
    await follow_up_is_prompt()


async def test_minilm_embeddings_equal_sentence_transformers_own(
    embed_handle: InstanceHandle, http: aiohttp.ClientSession, minilm_dir: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["A man is eating food.", "A cheetah chases prey across a field.", "Bonjour le monde"]
    status, body = await post(http, embed_handle, "/v1/embeddings", {"model": EMBED, "input": texts})
    assert status == 200, body
    assert body["object"] == "list" and body["model"] == EMBED
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    got = [d["embedding"] for d in body["data"]]
    assert {len(v) for v in got} == {384}
    reference = SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True).encode(texts)
    for mine, theirs in zip(got, reference.tolist(), strict=True):
        cosine = sum(a * b for a, b in zip(mine, theirs, strict=True)) / (
            math.hypot(*mine) * math.hypot(*theirs)
        )
        assert cosine > 0.99999
        assert math.hypot(*mine) == pytest.approx(1.0, abs=1e-4)  # the folder's Normalize module ran
    assert body["usage"]["prompt_tokens"] > len(texts)
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]


async def test_embeddings_base64_and_a_single_string(
    embed_handle: InstanceHandle, http: aiohttp.ClientSession
) -> None:
    text = "A man is eating food."
    _, floats = await post(http, embed_handle, "/v1/embeddings", {"input": text})
    status, packed = await post(
        http, embed_handle, "/v1/embeddings", {"input": [text], "encoding_format": "base64"}
    )
    assert status == 200
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)
    for bad in ({"input": []}, {"input": [[1, 2, 3]]}, {"input": "x", "encoding_format": "int8"}):
        status, err = await post(http, embed_handle, "/v1/embeddings", bad)
        assert status == 400, bad
    status, err = await post(http, embed_handle, "/v1/chat/completions", {"messages": PROMPT})
    assert status == 400 and "serves embedding" in err["error"]["message"]


def _write_junk_config(folder: Path) -> None:
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(os.urandom(256))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (None, "model folder not found"),
        (lambda p: p.write_text("a file, not a folder"), "not a folder"),
        (lambda p: p.mkdir(), "no config.json"),
        (_write_junk_config, "transformers could not load"),
    ],
    ids=["missing", "file", "no-config", "corrupt"],
)
async def test_a_bad_folder_fails_with_a_reason_and_leaves_no_process(
    tmp_path: Path, make: Any, reason: str
) -> None:
    folder = tmp_path / "model"
    if make is not None:
        make(folder)
    spec = spec_for(folder)
    with pytest.raises(ModelLoadFailed) as info:
        await make_runtime(tmp_path / "logs").start(spec)
    assert reason in info.value.message
    assert spec.instance_id in info.value.message
    assert not workers_for(spec.instance_id)


async def test_cuda_without_a_gpu_and_missing_packages_fail_clearly(tmp_path: Path, minilm_dir: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        spec = InstanceSpec(
            new_id(), EMBED, Artifact(EMBED, "safetensors", minilm_dir), "transformers", "cuda:0"
        )
        with pytest.raises(ModelLoadFailed, match="CUDA is not available"):
            await make_runtime(tmp_path / "logs").start(spec)
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named torch (test shadow)')\n")
    runtime = make_runtime(tmp_path / "logs", env={"PYTHONPATH": str(shadow.parent)})
    spec = spec_for(minilm_dir, EMBED)
    with pytest.raises(ModelLoadFailed, match=r"pip install 'superollama\[transformers\]'"):
        await runtime.start(spec)
    assert not workers_for(spec.instance_id)


async def test_sigterm_is_a_clean_stop(tmp_path: Path, minilm_dir: Path) -> None:
    runtime = make_runtime(tmp_path / "logs")
    handle = await runtime.start(spec_for(minilm_dir, EMBED))
    base_url = handle.endpoint.base_url
    await asyncio.gather(handle.stop(STOP_TIMEOUT), handle.stop(STOP_TIMEOUT))
    assert await handle.wait() == 0
    assert not workers_for(handle.instance_id)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{base_url}/health")
    assert "stopping" in runtime.log_path(handle.instance_id).read_text()


async def test_adopt_stops_a_leftover_worker_and_spares_any_other_process(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path / "logs")
    instance_id = new_id()
    # Command lines that look like a worker's: ``python -c CODE -m MODULE --instance-id ID``.
    sleep = "import time; time.sleep(60)"  # they idle until killed
    ours = await asyncio.create_subprocess_exec(
        sys.executable, "-c", sleep, "-m", TRANSFORMERS_WORKER, "--instance-id", instance_id
    )
    other_id = await asyncio.create_subprocess_exec(
        sys.executable, "-c", sleep, "-m", TRANSFORMERS_WORKER, "--instance-id", "someone-else"
    )
    bystander = await asyncio.create_subprocess_exec("sleep", "60")

    def record(pid: int) -> InstanceRecord:
        return InstanceRecord(
            id=instance_id,
            version=EMBED,
            node="local",
            runtime="transformers",
            state=InstanceState.READY,
            pid=pid,
        )

    def exec_done(proc: asyncio.subprocess.Process, program: str) -> bool:
        """The child has exec'd: its command line is the one a test gave it, readable by adopt."""
        try:
            return program in " ".join(psutil.Process(proc.pid).cmdline())
        except psutil.Error:
            return False

    try:
        for proc, program in ((ours, instance_id), (other_id, "someone-else"), (bystander, "sleep 60")):
            await wait_until(lambda: exec_done(proc, program), what=f"{program} started")  # noqa: B023
        assert await runtime.adopt(record(ours.pid)) is None
        assert await asyncio.wait_for(ours.wait(), 5) == -signal.SIGTERM
        for proc in (other_id, bystander):
            assert await runtime.adopt(record(proc.pid)) is None
            assert proc.returncode is None
            # Proof that adopt signalled nothing: a fatal signal sent earlier (SIGTERM) would already
            # have decided the exit status; ours, sent now, is the one the process dies of.
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
    finally:
        for proc in (ours, other_id, bystander):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


_INTERMEDIATE_PARENT = """
import asyncio, sys
from pathlib import Path
from superollama.core import Artifact, InstanceSpec
from superollama.runtimes import TransformersRuntime

async def main() -> None:
    runtime = TransformersRuntime(Path(sys.argv[2]), ready_timeout=240)
    artifact = Artifact(name="m", format="safetensors", path=Path(sys.argv[1]))
    handle = await runtime.start(InstanceSpec(sys.argv[3], "m", artifact, "transformers"))
    print(handle.pid, flush=True)
    await asyncio.sleep(600)  # not a wait: this parent idles until the test SIGKILLs it

asyncio.run(main())
"""


async def test_the_worker_dies_with_its_parent(tmp_path: Path, minilm_dir: Path) -> None:
    instance_id = new_id()
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _INTERMEDIATE_PARENT,
        str(minilm_dir),
        str(tmp_path / "logs"),
        instance_id,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        worker_pid = int(await asyncio.wait_for(parent.stdout.readline(), 240))
        assert is_our_process(worker_pid, instance_id, module=TRANSFORMERS_WORKER)
        parent.send_signal(signal.SIGKILL)
        await parent.wait()
        await wait_until(
            lambda: not workers_for(instance_id), timeout=5, what="the worker to die with its parent"
        )
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        for leftover in workers_for(instance_id):
            leftover.kill()


async def test_adopt_takes_back_a_healthy_guarded_worker_that_dies_with_its_guardian(
    smollm2_hf: Path, tmp_path: Path
) -> None:
    """``serve --workers N``: a worker started with the master as guardian is adopted by the next agent
    process (no reload) and ends with the master."""
    guardian = await asyncio.create_subprocess_exec("sleep", "600")  # stands for the master
    spec = spec_for(smollm2_hf)
    started = await make_runtime(tmp_path / "logs", guardian_pid=guardian.pid).start(spec)
    try:
        record = InstanceRecord(
            id=spec.instance_id,
            version=CHAT,
            node="local",
            runtime="transformers",
            state=InstanceState.READY,
            pid=started.pid,
            endpoint=started.endpoint.base_url,
        )
        adopted = await make_runtime(tmp_path / "logs", guardian_pid=guardian.pid).adopt(record)
        assert adopted is not None and adopted.alive()
        assert (adopted.pid, adopted.endpoint) == (started.pid, started.endpoint)
        waiting = asyncio.ensure_future(adopted.wait())
        guardian.kill()
        await guardian.wait()
        assert await asyncio.wait_for(waiting, 15) == 0  # it died with its guardian
        assert not adopted.alive() and not workers_for(spec.instance_id)
    finally:
        if guardian.returncode is None:
            guardian.kill()
            await guardian.wait()
        await started.stop(STOP_TIMEOUT)
