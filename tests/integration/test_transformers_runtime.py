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

from superollama.core import Artifact, InstanceHandle, InstanceRecord, InstanceSpec, InstanceState
from superollama.errors import ModelLoadFailed
from superollama.runtimes import TRANSFORMERS_WORKER, TransformersRuntime, is_our_process

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("hf_extra")]

CHAT = "smollm2:135m-hf"
EMBED = "all-minilm:l6-v2"
STOP_TIMEOUT = 10.0
PROMPT = [{"role": "user", "content": "Write one sentence about the sea."}]


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


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": PROMPT, "n": 2}, "n"),
        ({"messages": PROMPT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"messages": []}, "messages"),
        ({"messages": PROMPT, "temperature": 5}, "temperature"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ],
    ids=["n", "tools", "no-messages", "temperature", "image"],
)
async def test_requests_it_cannot_honour_are_400s(
    chat_handle: InstanceHandle, http: aiohttp.ClientSession, body: dict[str, Any], param: str
) -> None:
    status, err = await post(http, chat_handle, "/v1/chat/completions", body)
    assert status == 400
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["param"] == param


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

    async with aiohttp.ClientSession() as own:
        pending = asyncio.create_task(own.post(url, json=endless))
        await asyncio.sleep(1.5)  # it holds the model now
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
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
    sleep = "import time; time.sleep(60)"
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

    try:
        await asyncio.sleep(0.3)  # the interpreters are up and their command lines readable
        assert await runtime.adopt(record(ours.pid)) is None
        assert await asyncio.wait_for(ours.wait(), 5) == -signal.SIGTERM
        for proc in (other_id, bystander):
            assert await runtime.adopt(record(proc.pid)) is None
        await asyncio.sleep(0.2)
        assert other_id.returncode is None and bystander.returncode is None
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
    await asyncio.sleep(600)

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
        for _ in range(100):
            if not workers_for(instance_id):
                break
            await asyncio.sleep(0.05)
        assert not workers_for(instance_id), "the worker outlived its parent"
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        for leftover in workers_for(instance_id):
            leftover.kill()
