"""The llama.cpp runtime against real llama.cpp (xllamacpp) and the real SmolLM2 GGUF."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psutil
import pytest
from tests.waiting import wait_until

from superollama.core import Artifact, InstanceHandle, InstanceRecord, InstanceSpec, InstanceState
from superollama.errors import ModelLoadFailed
from superollama.runtimes import WORKER_MODULE, LlamaCppRuntime, is_our_process

VERSION = "smollm2:135m"
STOP_TIMEOUT = 5.0

Starter = Callable[..., Coroutine[Any, Any, InstanceHandle]]


def new_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def spec_for(path: Path, instance_id: str | None = None, **options: Any) -> InstanceSpec:
    return InstanceSpec(
        instance_id=instance_id or new_id(),
        version=VERSION,
        artifact=Artifact(name="smollm2", format="gguf", path=path),
        runtime="llamacpp",
        options=options,
    )


def workers_for(instance_id: str) -> list[psutil.Process]:
    """Every live (non-zombie) process on the machine that is a worker for ``instance_id``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if WORKER_MODULE in cmdline and instance_id in cmdline:
            found.append(proc)
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def port_closed(base_url: str) -> bool:
    parts = urlsplit(base_url)
    assert parts.hostname and parts.port
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.fixture
def runtime(tmp_path: Path) -> LlamaCppRuntime:
    return LlamaCppRuntime(
        tmp_path / "logs", ctx=2048, parallel=2, threads=2, ready_timeout=60, stop_timeout=STOP_TIMEOUT
    )


@pytest.fixture
async def start(runtime: LlamaCppRuntime) -> AsyncIterator[Starter]:
    """Start instances through the runtime; every one is stopped at the end, whatever happened."""
    handles: list[InstanceHandle] = []

    async def _start(spec: InstanceSpec) -> InstanceHandle:
        handle = await runtime.start(spec)
        handles.append(handle)
        return handle

    try:
        yield _start
    finally:
        for handle in handles:
            await handle.stop(STOP_TIMEOUT)


async def test_serves_health_chat_and_embeddings_then_stops_cleanly(
    start: Starter, runtime: LlamaCppRuntime, smollm2_gguf: Path
) -> None:
    spec = spec_for(smollm2_gguf)
    handle = await start(spec)
    ep = handle.endpoint
    assert (ep.provider, ep.served_name) == ("openai", VERSION)
    assert ep.base_url.startswith("http://127.0.0.1:")
    assert handle.alive()
    assert handle.instance_id == spec.instance_id
    assert is_our_process(handle.pid, spec.instance_id)
    assert runtime.log_path(spec.instance_id).stat().st_size > 0  # llama.cpp's stderr went to the log

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with http.get(f"{ep.base_url}/health") as resp:
            assert resp.status == 200
        async with http.get(f"{ep.base_url}/v1/models") as resp:
            assert VERSION in [m["id"] for m in (await resp.json())["data"]]
        chat = {
            "model": VERSION,
            "messages": [{"role": "user", "content": "Say hello in one word."}],
            "max_tokens": 8,
            "temperature": 0,
        }
        async with http.post(f"{ep.base_url}/v1/chat/completions", json=chat) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert body["choices"][0]["message"]["content"].strip()
        assert body["usage"]["prompt_tokens"] > 0
        assert body["usage"]["completion_tokens"] > 0
        emb = {"model": VERSION, "input": ["hello world", "a rather different sentence"]}
        async with http.post(f"{ep.base_url}/v1/embeddings", json=emb) as resp:
            assert resp.status == 200, await resp.text()
            vectors = [d["embedding"] for d in (await resp.json())["data"]]
        assert [len(v) for v in vectors] == [576, 576]
        assert vectors[0] != vectors[1]

    await handle.stop(STOP_TIMEOUT)
    assert not handle.alive()
    assert await handle.wait() == 0  # SIGTERM is a clean shutdown
    assert gone(handle.pid)
    assert not workers_for(spec.instance_id)
    assert port_closed(ep.base_url)


async def test_embedding_can_be_switched_off(start: Starter, smollm2_gguf: Path) -> None:
    handle = await start(spec_for(smollm2_gguf, embedding=False))
    cmdline = psutil.Process(handle.pid).cmdline()
    assert "--no-embedding" in cmdline
    emb = {"model": VERSION, "input": ["hello"]}
    url = f"{handle.endpoint.base_url}/v1/embeddings"
    async with aiohttp.ClientSession() as http, http.post(url, json=emb) as resp:
        assert resp.status != 200


def _gguf_magic_then_garbage(path: Path) -> None:
    path.write_bytes(b"GGUF" + os.urandom(4096))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (None, "model file not found"),
        (lambda p: p.write_bytes(b"not a model at all" * 100), "not a GGUF file"),
        (_gguf_magic_then_garbage, "llama.cpp could not load"),
    ],
    ids=["missing", "not-gguf", "corrupt-gguf"],
)
async def test_bad_model_file_fails_with_a_reason_and_leaves_no_process(
    runtime: LlamaCppRuntime, tmp_path: Path, make: Callable[[Path], None] | None, reason: str
) -> None:
    path = tmp_path / "model.gguf"
    if make is not None:
        make(path)
    spec = spec_for(path)
    with pytest.raises(ModelLoadFailed) as info:
        await runtime.start(spec)
    message = str(info.value)
    assert reason in message
    assert spec.instance_id in message
    assert not workers_for(spec.instance_id)


async def test_corrupt_gguf_failure_carries_the_llamacpp_log_tail(
    runtime: LlamaCppRuntime, tmp_path: Path
) -> None:
    path = tmp_path / "corrupt.gguf"
    _gguf_magic_then_garbage(path)
    with pytest.raises(ModelLoadFailed) as info:
        await runtime.start(spec_for(path))
    assert "log" in info.value.message
    assert "failed to load model" in info.value.message  # llama.cpp's own words, from the log file


async def test_ready_timeout_kills_the_worker(tmp_path: Path, smollm2_gguf: Path) -> None:
    runtime = LlamaCppRuntime(tmp_path / "logs", ctx=512, parallel=1, ready_timeout=0.05)
    spec = spec_for(smollm2_gguf)
    with pytest.raises(ModelLoadFailed, match=r"did not become ready in 0\.05 s"):
        await runtime.start(spec)
    assert not workers_for(spec.instance_id)


async def test_cancelled_start_leaves_no_process(runtime: LlamaCppRuntime, smollm2_gguf: Path) -> None:
    spec = spec_for(smollm2_gguf)
    task = asyncio.create_task(runtime.start(spec))
    spawned = await wait_until(lambda: workers_for(spec.instance_id), what="the worker process")
    assert not task.done()  # still loading: the cancel lands in the middle of the start
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(gone(p.pid) for p in spawned), "the cancelled start left its worker running"
    assert not workers_for(spec.instance_id)


async def test_sigkill_of_the_worker_is_seen_and_stop_still_works(start: Starter, smollm2_gguf: Path) -> None:
    handle = await start(spec_for(smollm2_gguf))
    os.kill(handle.pid, signal.SIGKILL)
    assert await asyncio.wait_for(handle.wait(), 10) == -signal.SIGKILL
    assert not handle.alive()
    await handle.stop(STOP_TIMEOUT)  # after death: no error, signals nothing
    await handle.stop(STOP_TIMEOUT)


async def test_stop_is_idempotent_and_safe_concurrently(start: Starter, smollm2_gguf: Path) -> None:
    handle = await start(spec_for(smollm2_gguf))
    await asyncio.gather(*(handle.stop(STOP_TIMEOUT) for _ in range(3)))
    assert not handle.alive()
    await handle.stop(STOP_TIMEOUT)
    assert await handle.wait() == 0
    assert gone(handle.pid)


_INTERMEDIATE_PARENT = """
import asyncio, sys
from pathlib import Path
from superollama.core import Artifact, InstanceSpec
from superollama.runtimes import LlamaCppRuntime

async def main() -> None:
    guardian = int(sys.argv[4]) if len(sys.argv) > 4 else None
    runtime = LlamaCppRuntime(Path(sys.argv[2]), ctx=512, parallel=1, ready_timeout=60, guardian_pid=guardian)
    artifact = Artifact(name="smollm2", format="gguf", path=Path(sys.argv[1]))
    handle = await runtime.start(InstanceSpec(sys.argv[3], "smollm2:135m", artifact, "llamacpp"))
    print(handle.pid, handle.endpoint.base_url, flush=True)
    await asyncio.sleep(600)  # not a wait: this parent idles until the test SIGKILLs it

asyncio.run(main())
"""


async def test_worker_dies_when_its_parent_is_sigkilled(tmp_path: Path, smollm2_gguf: Path) -> None:
    instance_id = new_id()
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _INTERMEDIATE_PARENT,
        str(smollm2_gguf),
        str(tmp_path / "logs"),
        instance_id,
        stdout=asyncio.subprocess.PIPE,
    )
    worker_pid: int | None = None
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(parent.stdout.readline(), 60)
        worker_pid = int(line.split()[0])
        assert is_our_process(worker_pid, instance_id)
        parent.kill()
        await parent.wait()
        pid = worker_pid
        await wait_until(lambda: gone(pid), timeout=5, what="the worker to die with its parent")
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        for leftover in workers_for(instance_id):
            leftover.kill()


async def test_a_guarded_worker_outlives_its_parent_is_adopted_and_dies_with_its_guardian(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    """``serve --workers N``: the agent process (here an intermediate parent) dies, its model process
    serves on; the next agent adopts it (no reload); it dies with its guardian (the master)."""
    instance_id = new_id()
    guardian = await asyncio.create_subprocess_exec("sleep", "600")  # stands for the master
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _INTERMEDIATE_PARENT,
        str(smollm2_gguf),
        str(tmp_path / "logs"),
        instance_id,
        str(guardian.pid),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        pid_text, base_url = (await asyncio.wait_for(parent.stdout.readline(), 60)).decode().split()
        worker_pid = int(pid_text)
        parent.kill()
        await parent.wait()
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(base_url + "/health") as resp:
            assert resp.status == 200  # it serves on without its parent
        record = InstanceRecord(
            id=instance_id,
            version=VERSION,
            node="local",
            runtime="llamacpp",
            state=InstanceState.READY,
            pid=worker_pid,
            endpoint=base_url,
        )
        unguarded = LlamaCppRuntime(tmp_path / "logs", guardian_pid=os.getpid())  # another master's
        adopter = LlamaCppRuntime(tmp_path / "logs", guardian_pid=guardian.pid, stop_timeout=STOP_TIMEOUT)
        handle = await adopter.adopt(record)
        assert handle is not None and handle.alive()
        assert (handle.pid, handle.endpoint.base_url, handle.endpoint.served_name) == (
            worker_pid,
            base_url,
            VERSION,
        )
        waiting = asyncio.ensure_future(handle.wait())
        guardian.kill()
        await guardian.wait()
        assert await asyncio.wait_for(waiting, 10) == 0  # the adopted worker died with its guardian
        assert not handle.alive() and gone(worker_pid)
        assert await unguarded.adopt(record) is None  # nothing left to adopt or stop
    finally:
        for proc in (parent, guardian):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for leftover in workers_for(instance_id):
            leftover.kill()


async def test_adopt_stops_a_worker_guarded_for_another_master(tmp_path: Path, smollm2_gguf: Path) -> None:
    spec = spec_for(smollm2_gguf)
    guarded = LlamaCppRuntime(tmp_path / "logs", ctx=2048, parallel=1, guardian_pid=os.getppid())
    handle = await guarded.start(spec)
    try:
        record = InstanceRecord(
            id=spec.instance_id,
            version=VERSION,
            node="local",
            runtime="llamacpp",
            state=InstanceState.READY,
            pid=handle.pid,
            endpoint=handle.endpoint.base_url,
        )
        other = LlamaCppRuntime(tmp_path / "logs", guardian_pid=os.getpid(), stop_timeout=STOP_TIMEOUT)
        assert await other.adopt(record) is None
        assert await asyncio.wait_for(handle.wait(), 10) == 0  # SIGTERM, clean exit
    finally:
        await handle.stop(STOP_TIMEOUT)


async def test_adopt_stops_a_live_worker_of_ours(
    start: Starter, runtime: LlamaCppRuntime, smollm2_gguf: Path
) -> None:
    spec = spec_for(smollm2_gguf)
    handle = await start(spec)
    record = InstanceRecord(
        id=spec.instance_id,
        version=VERSION,
        node="local",
        runtime="llamacpp",
        state=InstanceState.READY,
        pid=handle.pid,
        endpoint=handle.endpoint.base_url,
    )
    assert await runtime.adopt(record) is None
    assert await asyncio.wait_for(handle.wait(), 10) == 0  # SIGTERM, clean exit
    assert not workers_for(spec.instance_id)
    assert port_closed(handle.endpoint.base_url)


@pytest.mark.parametrize("kind", ["sleep", "same-module-other-id", "same-id-other-program"])
async def test_adopt_never_kills_a_process_that_is_not_ours(runtime: LlamaCppRuntime, kind: str) -> None:
    instance_id = new_id()
    if kind == "sleep":
        argv: tuple[str, ...] = ("sleep", "60")
    else:
        # ``python -c CODE …``: the rest lands in sys.argv, so the cmdline looks like a worker's.
        code = "import time; time.sleep(60)"  # a bystander that idles until killed
        other_id = "other-instance" if kind == "same-module-other-id" else instance_id
        module = WORKER_MODULE if kind == "same-module-other-id" else "some.other.module"
        argv = (sys.executable, "-c", code, "-m", module, "--instance-id", other_id)
    bystander = await asyncio.create_subprocess_exec(*argv)
    try:
        record = InstanceRecord(
            id=instance_id,
            version=VERSION,
            node="local",
            runtime="llamacpp",
            state=InstanceState.READY,
            pid=bystander.pid,
        )
        assert not is_our_process(bystander.pid, instance_id)
        assert await runtime.adopt(record) is None
        assert bystander.returncode is None
        # Proof that adopt signalled nothing: a fatal signal sent earlier (SIGTERM) would already have
        # decided the exit status; ours, sent now, is the one the process dies of.
        bystander.kill()
        assert await bystander.wait() == -signal.SIGKILL
    finally:
        if bystander.returncode is None:
            bystander.kill()
            await bystander.wait()


async def test_adopt_without_pid_or_with_a_dead_pid_returns_none(runtime: LlamaCppRuntime) -> None:
    done = await asyncio.create_subprocess_exec("true")
    await done.wait()
    for pid in (None, done.pid):
        record = InstanceRecord(
            id=new_id(), version=VERSION, node="local", runtime="llamacpp", state=InstanceState.READY, pid=pid
        )
        assert await runtime.adopt(record) is None
