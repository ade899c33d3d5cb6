"""One behaviour for every ``Runtime``: llama.cpp (real SmolLM2 GGUF), transformers (real all-MiniLM-L6-v2
folder) and, in the slow tier, vLLM (the same MiniLM, in vLLM's own virtual environment, as
tests/integration/test_vllm_runtime.py finds it).

Through the seam only (``accepts``, ``start``, the ``InstanceHandle``): a runtime accepts its format and
no other; a start returns a live handle whose endpoint speaks the runtime's protocol (health, models, one
real request); ``stop`` leaves no process of the instance's tree and no listener; a model that cannot be
loaded fails the start with ``ModelLoadFailed`` and leaves no process behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psutil
import pytest
from tests.waiting import wait_until

from superollama.core import Artifact, InstanceHandle, InstanceSpec, Runtime
from superollama.errors import ModelLoadFailed
from superollama.runtimes import LlamaCppRuntime, TransformersRuntime, VllmRuntime

VLLM_PYTHON = os.environ.get("SUPEROLLAMA_VLLM_PYTHON", "/opt/superollama-vllm/bin/python")
STOP_TIMEOUT = 15.0


def _has_vllm(python: str) -> bool:
    if not Path(python).is_file():
        return False
    code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 1)"
    return subprocess.run([python, "-c", code], check=False, capture_output=True).returncode == 0


def _has_transformers() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("torch", "transformers", "sentence_transformers"))


@dataclass(frozen=True)
class Kind:
    """How to build one runtime, the real model it serves, an artifact it must refuse, what to ask it."""

    make: Callable[[Path], Runtime]
    model: str  # the conftest fixture holding the model's path
    format: str
    foreign: Artifact
    operation: str  # "chat" or "embeddings"

    def broken(self, tmp: Path) -> Artifact:
        """An artifact in the runtime's format that no backend can load."""
        if self.format == "gguf":
            path = tmp / "broken.gguf"
            path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + os.urandom(4096))
        else:
            path = tmp / "broken-folder"
            path.mkdir()
            (path / "config.json").write_text('{"model_type": "no-such-architecture"}')
            (path / "model.safetensors").write_bytes(os.urandom(4096))
        return Artifact(name="broken", format=self.format, path=path)


KINDS = {
    "llamacpp": Kind(
        lambda logs: LlamaCppRuntime(logs, ctx=512, parallel=1, threads=2, ready_timeout=120),
        "smollm2_gguf",
        "gguf",
        Artifact(name="f", format="safetensors", path=Path("/")),
        "chat",
    ),
    "transformers": Kind(
        lambda logs: TransformersRuntime(logs, threads=2, ready_timeout=240, stop_timeout=STOP_TIMEOUT),
        "minilm_dir",
        "safetensors",
        Artifact(name="f", format="gguf", path=Path("/dev/null")),
        "embeddings",
    ),
    "vllm": Kind(
        lambda logs: VllmRuntime(logs, python=VLLM_PYTHON, ready_timeout=600, stop_timeout=STOP_TIMEOUT),
        "minilm_dir",
        "safetensors",
        Artifact(name="f", format="gguf", path=Path("/dev/null")),
        "embeddings",
    ),
}
RUNTIMES = [
    "llamacpp",
    pytest.param(
        "transformers",
        marks=pytest.mark.skipif(not _has_transformers(), reason="pip install 'superollama[transformers]'"),
    ),
    pytest.param(
        "vllm",
        marks=[
            pytest.mark.slow,
            pytest.mark.skipif(not _has_vllm(VLLM_PYTHON), reason=f"no vLLM venv at {VLLM_PYTHON}"),
        ],
    ),
]


def spec_for(runtime: Runtime, artifact: Artifact) -> InstanceSpec:
    return InstanceSpec(
        f"contract-{uuid.uuid4().hex[:12]}", f"{artifact.name}:contract", artifact, runtime.name
    )


def instance_processes(instance_id: str) -> list[psutil.Process]:
    """Every live process whose command line names the instance (the worker or supervisor)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and instance_id in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def listening(base_url: str) -> bool:
    parts = urlsplit(base_url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1).close()
    except OSError:
        return False
    return True


async def ask(http: aiohttp.ClientSession, handle: InstanceHandle, operation: str) -> dict[str, Any]:
    """One real request of the runtime's kind, in its endpoint's protocol (OpenAI for all three)."""
    model = handle.endpoint.served_name
    if operation == "chat":
        path = "/v1/chat/completions"
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
        }
    else:
        path, body = "/v1/embeddings", {"model": model, "input": ["a cat", "a dog"]}
    async with http.post(handle.endpoint.base_url + path, json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
    return answer


@pytest.fixture
def kind(request: pytest.FixtureRequest) -> Kind:
    return KINDS[request.param]


@pytest.mark.parametrize("kind", RUNTIMES, indirect=True)
async def test_start_serve_stop_leaves_nothing(
    kind: Kind, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    runtime = kind.make(tmp_path / "logs")
    model = Artifact(name="real", format=kind.format, path=request.getfixturevalue(kind.model))
    assert runtime.accepts(model) and not runtime.accepts(kind.foreign)

    spec = spec_for(runtime, model)
    handle = await runtime.start(spec)
    tree: list[psutil.Process] = []
    try:
        assert isinstance(handle, InstanceHandle) and handle.alive()
        assert handle.instance_id == spec.instance_id and handle.endpoint.provider == runtime.provider
        root = psutil.Process(handle.pid)
        tree = [root, *root.children(recursive=True)]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            async with http.get(handle.endpoint.base_url + "/health") as resp:
                assert resp.status == 200
            async with http.get(handle.endpoint.base_url + "/v1/models") as resp:
                served = [m["id"] for m in (await resp.json())["data"]]
            assert handle.endpoint.served_name in served
            answer = await ask(http, handle, kind.operation)
        if kind.operation == "chat":
            assert answer["choices"][0]["message"]["content"] and answer["usage"]["completion_tokens"] > 0
        else:
            vectors = [d["embedding"] for d in answer["data"]]
            assert len(vectors) == 2 and len(vectors[0]) == 384 and vectors[0] != vectors[1]
    finally:
        await handle.stop(STOP_TIMEOUT)
    assert not handle.alive()
    assert isinstance(await handle.wait(), int)
    await handle.stop(STOP_TIMEOUT)  # idempotent
    await wait_until(lambda: not any(running(p) for p in tree), what="the instance's processes gone")
    assert not listening(handle.endpoint.base_url)
    assert not instance_processes(spec.instance_id)


@pytest.mark.parametrize("kind", RUNTIMES, indirect=True)
async def test_a_model_that_cannot_load_fails_the_start_cleanly(kind: Kind, tmp_path: Path) -> None:
    runtime = kind.make(tmp_path / "logs")
    broken = kind.broken(tmp_path)
    assert runtime.accepts(broken)  # the right format: the failure is the backend's, at load time
    spec = spec_for(runtime, broken)
    with pytest.raises(ModelLoadFailed) as failed:
        await runtime.start(spec)
    assert failed.value.message
    assert not instance_processes(spec.instance_id)
