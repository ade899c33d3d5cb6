"""The seed's official example, end to end: `superollama pull hf://…` of a Hugging Face model folder
(from a local stand-in of the hub with the real files — the real hub is unreachable here), served by the
transformers runtime, called with the official OpenAI SDK. Chat: SmolLM2 as safetensors (derived from the
real GGUF); embeddings: the real all-MiniLM-L6-v2 sentence-transformers folder. The same server then
answers structured output (``response_format`` json_schema) and a forced tool call through the gateway,
parsed by the SDK's own helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_lifecycle_ops import HubThread
from tests.integration.conftest import hf_extra, smollm2_hf  # noqa: F401  (fixtures)
from tests.unit.test_json_guide import conforms


def _files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    smollm2_hf: Path,  # noqa: F811
    minilm_dir: Path,
) -> Iterator[ServerProcess]:
    with HubThread() as hub:
        hub.add_hf_repo("HuggingFaceTB/SmolLM2-135M-Instruct", _files(smollm2_hf))
        hub.add_hf_repo("sentence-transformers/all-MiniLM-L6-v2", _files(minilm_dir))
        home = tmp_path_factory.mktemp("home")
        srv = ServerProcess(home, HF_ENDPOINT=hub.url, SUPEROLLAMA_BUNDLED_MODEL="false").start()
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> OpenAI:
    pulled = server.cli("pull", "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "--name", "smollm2:hf")
    assert pulled.returncode == 0, pulled.stderr
    return OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)


def test_pull_from_hf_and_serve_with_transformers(server: ServerProcess, client: OpenAI) -> None:
    pulled = server.cli("pull", "hf://sentence-transformers/all-MiniLM-L6-v2", "--name", "minilm")
    assert pulled.returncode == 0, pulled.stderr
    shown = json.loads(server.cli("show", "smollm2:hf", "--json").stdout)
    assert shown["format"] == "safetensors" and shown["architecture"] == "llama"

    out = client.chat.completions.create(
        model="smollm2:hf", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, seed=1
    )
    assert out.choices[0].message.content and out.usage and out.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="smollm2:hf",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    emb = client.embeddings.create(model="minilm:latest", input=["a cat", "a dog"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384

    runtimes = {i["version"]: i["runtime"] for i in server.instances()}
    assert runtimes == {"smollm2:hf": "transformers", "minilm:latest": "transformers"}


class Cat(BaseModel):
    name: str = Field(max_length=12)
    age: int
    colors: list[Literal["black", "white", "orange"]] = Field(max_length=2)


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(max_length=20)
    unit: Literal["celsius", "fahrenheit"]


def test_structured_output_and_a_forced_tool_call_through_the_gateway(client: OpenAI) -> None:
    ask_cat = [{"role": "user", "content": "Describe a cat as JSON with a name, an age and colors."}]
    done = client.chat.completions.parse(
        model="smollm2:hf", messages=ask_cat, response_format=Cat, max_tokens=80, temperature=0
    )
    choice = done.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(choice.message.parsed, Cat), choice.message.content
    assert conforms(
        json.loads(choice.message.content or ""), openai.pydantic_function_tool(Cat)["function"]["parameters"]
    )

    tool = openai.pydantic_function_tool(GetWeather)
    called = client.chat.completions.parse(
        model="smollm2:hf",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "GetWeather"}},
        max_tokens=60,
        temperature=0,
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name == "GetWeather"
    assert isinstance(call.function.parsed_arguments, GetWeather), call.function.arguments
    assert conforms(json.loads(call.function.arguments), tool["function"]["parameters"])

    streamed = client.chat.completions.create(
        model="smollm2:hf",
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
        tools=[tool],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in streamed:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            if delta.function is not None:
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "tool_calls" and list(calls) == [0] and calls[0]["name"] == "GetWeather"
    assert GetWeather.model_validate_json(calls[0]["arguments"])


def test_anthropic_messages_and_responses_on_transformers(server: ServerProcess, client: OpenAI) -> None:
    """The translated APIs over the transformers runtime: a Messages answer, its forced tool use streamed
    as ``input_json_delta``s, a token count from the backend's own usage, and a Responses answer."""
    import anthropic

    claude = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=300)
    hello: Any = [{"role": "user", "content": "Say hello"}]
    out = claude.messages.create(model="smollm2:hf", max_tokens=6, system="Be brief.", messages=hello)
    assert out.content[0].type == "text" and out.content[0].text and out.usage.input_tokens > 0
    counted = claude.messages.with_raw_response.count_tokens(
        model="smollm2:hf", system="Be brief.", messages=hello
    )
    assert counted.parse().input_tokens == out.usage.input_tokens  # the backend's own prompt count
    assert counted.headers["x-superollama-token-count"] == "backend-usage"

    tool: Any = {
        "name": "GetWeather",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,  # the worker's JSON guide then admits only this shape
        },
    }
    with claude.messages.stream(
        model="smollm2:hf",
        max_tokens=60,
        tools=[tool],
        tool_choice={"type": "any"},
        extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events), (
        final.content,
    )
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and use.name == "GetWeather" and isinstance(use.input["city"], str)

    answer = client.responses.create(model="smollm2:hf", input="Say hello", max_output_tokens=6)
    assert answer.output_text and answer.usage is not None and answer.usage.output_tokens > 0
    assert client.responses.retrieve(answer.id).output_text == answer.output_text
