"""The vLLM supervisor with a stand-in server (fast, no vLLM): a small HTTP server that, like vLLM, runs
part of itself in a further process. Checks the handshake, the graceful stop of the whole group, the
watchdog when the supervisor is SIGKILLed, and a server that dies before it is ready."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from tests.waiting import wait_until

from superollama.errors import ModelLoadFailed
from superollama.runtimes import VLLM_SUPERVISOR, ProcessHandle, WorkerLaunch, is_our_process, spawn_worker

# Like vLLM: an API server with an "engine" child process (idle until killed); /health answers once it
# is up, after argv[1] seconds (the sleep stands in for a slow model load).
STAND_IN = """
import http.server, subprocess, sys, time
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
port = int(sys.argv[sys.argv.index("--port") + 1])
time.sleep(float(sys.argv[1]))

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def launch(tmp_path: Path, *server: str, ready_timeout: float = 30.0) -> WorkerLaunch:
    instance_id = f"test-{uuid.uuid4().hex[:12]}"
    argv = (
        sys.executable,
        "-m",
        VLLM_SUPERVISOR,
        "--instance-id",
        instance_id,
        "--ready-timeout",
        f"{ready_timeout:g}",
        "--stop-timeout",
        "3",
        "--parent-pid",
        str(os.getpid()),
        "--",
        *server,
    )
    return WorkerLaunch(argv, instance_id, tmp_path / f"{instance_id}.log", "m", "openai", ready_timeout + 10)


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def all_gone(procs: list[psutil.Process], within: float = 10.0) -> bool:
    """True once none of ``procs`` runs; False after ``within`` s (the caller names the leftovers)."""
    with contextlib.suppress(AssertionError):
        await wait_until(lambda: not any(running(p) for p in procs), timeout=within)
    return not any(running(p) for p in procs)


async def started(tmp_path: Path) -> tuple[ProcessHandle, list[psutil.Process]]:
    handle = await spawn_worker(launch(tmp_path, sys.executable, "-c", STAND_IN, "0.3"))
    procs = tree(handle.pid)
    # supervisor, watchdog, server, engine
    assert len(procs) == 4, [p.cmdline() for p in procs]
    return handle, procs


async def test_ready_then_sigterm_stops_the_whole_group(tmp_path: Path) -> None:
    handle, procs = await started(tmp_path)
    assert handle.endpoint.base_url.startswith("http://127.0.0.1:")
    assert is_our_process(handle.pid, handle.instance_id, module=VLLM_SUPERVISOR)
    await handle.stop(10)
    assert await handle.wait() == 0
    assert await all_gone(procs)


async def test_a_killed_supervisor_takes_the_server_and_its_engine_along(tmp_path: Path) -> None:
    handle, procs = await started(tmp_path)
    os.kill(handle.pid, signal.SIGKILL)
    assert await handle.wait() == -signal.SIGKILL
    assert await all_gone(procs), [p.cmdline() for p in procs if running(p)]


async def test_a_cancelled_start_leaves_nothing(tmp_path: Path) -> None:
    task = asyncio.create_task(spawn_worker(launch(tmp_path, sys.executable, "-c", STAND_IN, "30")))

    def server_and_engine() -> list[psutil.Process]:
        servers = [p for p in psutil.process_iter(["cmdline"]) if STAND_IN in (p.info["cmdline"] or [])]
        engines = [c for p in servers for c in p.children(recursive=True)]
        return [*servers, *engines] if servers and engines else []

    procs = await wait_until(server_and_engine, what="the server and its engine (/health is not up)")
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await all_gone(procs)


# A supervisor that is SIGKILLed the moment vLLM's process has started (argv[1]: where the stand-in server
# writes its own pid and its engine's): it does what ``main`` does up to Popen, then nothing more of its own.
KILLED_AT_START = """
import functools, os, signal, subprocess, sys, time
from superollama.runtimes.vllm_supervisor import enter_watch, start_watchdog
_, tell = start_watchdog()
server = subprocess.Popen(
    [sys.executable, "-c", sys.argv[2], sys.argv[1]],
    start_new_session=True,
    preexec_fn=functools.partial(enter_watch, tell, os.getpid()),
)
while not os.path.getsize(sys.argv[1]):  # the server and its engine run: die before anything else
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""
# Like vLLM, it keeps running when its parent dies: it clears the death signal before anything else.
IMMORTAL_SERVER = """
import ctypes, os, subprocess, sys, time
ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(sys.argv[1], "w") as out:
    out.write(f"{os.getpid()} {engine.pid} ")
time.sleep(600)
"""


async def test_a_supervisor_killed_as_vllm_starts_still_takes_its_group_along(tmp_path: Path) -> None:
    """The watchdog is there before vLLM's process is, and learns its group before vLLM can start a
    process of its own: no moment in which a SIGKILL of the supervisor leaves vLLM's engine behind."""
    pids = tmp_path / "server-and-engine.pid"
    pids.touch()
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_AT_START, str(pids), IMMORTAL_SERVER
    )
    assert await supervisor.wait() == -signal.SIGKILL
    server, engine = (int(pid) for pid in pids.read_text().split())

    def alive(pid: int) -> bool:
        try:
            return running(psutil.Process(pid))
        except psutil.NoSuchProcess:
            return False

    await wait_until(lambda: not alive(server) and not alive(engine), what="vLLM's server and engine gone")


async def test_a_server_that_dies_early_or_never_answers_fails_with_the_reason(tmp_path: Path) -> None:
    crash = "import sys; print('CUDA out of memory (stand-in)', file=sys.stderr); sys.exit(2)"
    with pytest.raises(ModelLoadFailed) as info:
        await spawn_worker(launch(tmp_path, sys.executable, "-c", crash))
    assert "vLLM exited with code 2 before it was ready" in info.value.message
    assert "CUDA out of memory (stand-in)" in info.value.message  # the log tail
    with pytest.raises(ModelLoadFailed, match=r"vLLM did not become ready in 1 s"):
        await spawn_worker(launch(tmp_path, sys.executable, "-c", STAND_IN, "30", ready_timeout=1))
    with pytest.raises(ModelLoadFailed, match="cannot start"):
        await spawn_worker(launch(tmp_path, str(tmp_path / "no-such-python")))


_AGENT = """
import asyncio, sys
from pathlib import Path
from superollama.runtimes import VLLM_SUPERVISOR, WorkerLaunch, spawn_worker

async def main() -> None:
    # what VllmRuntime.start runs for an agent process with a guardian (``serve --workers N``)
    argv = (sys.executable, "-m", VLLM_SUPERVISOR, "--instance-id", sys.argv[1], "--stop-timeout", "3",
            "--parent-pid", str(__import__("os").getpid()), "--guardian-pid", sys.argv[2], "--",
            sys.executable, "-c", sys.argv[3], "0.3")
    handle = await spawn_worker(WorkerLaunch(argv, sys.argv[1], Path(sys.argv[4]), "m", "openai", 40))
    print(handle.pid, handle.endpoint.base_url, flush=True)
    await asyncio.sleep(600)  # idles until the test SIGKILLs it

asyncio.run(main())
"""


async def test_a_guarded_supervisor_outlives_its_agent_is_adopted_and_stops_with_its_guardian(
    tmp_path: Path,
) -> None:
    """``serve --workers N``: the agent process dies, its vLLM serves on (no reload of minutes); the next
    agent's runtime takes it back by its record; when the guardian (the master) exits, the supervisor stops
    vLLM's whole group. A runtime of another guardian never adopts it."""
    from superollama.core import InstanceRecord, InstanceState
    from superollama.runtimes.vllm import VllmHandle, VllmRuntime

    instance_id = f"test-{uuid.uuid4().hex[:12]}"
    guardian = await asyncio.create_subprocess_exec("sleep", "600")  # stands for the master
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _AGENT,
        instance_id,
        str(guardian.pid),
        STAND_IN,
        str(tmp_path / f"{instance_id}.log"),
        stdout=asyncio.subprocess.PIPE,
    )
    procs: list[psutil.Process] = []
    try:
        assert agent.stdout is not None
        pid_text, base_url = (await asyncio.wait_for(agent.stdout.readline(), 60)).decode().split()
        supervisor = int(pid_text)
        procs = tree(supervisor)
        assert len(procs) == 4, [p.cmdline() for p in procs]  # supervisor, watchdog, server, engine
        agent.kill()
        await agent.wait()
        # re-parented: the agent is gone for the kernel (a supervisor tied to it got its signal then)
        await wait_until(
            lambda: psutil.Process(supervisor).ppid() != agent.pid, what="the supervisor re-parented"
        )
        assert all(running(p) for p in procs), "the supervisor and its vLLM outlive the agent"
        record = InstanceRecord(
            instance_id, "m:1", "local", "vllm", InstanceState.READY, pid=supervisor, endpoint=base_url
        )
        other = VllmRuntime(tmp_path, guardian_pid=os.getpid())  # another master's runtime
        adopter = VllmRuntime(tmp_path, guardian_pid=guardian.pid, stop_timeout=3)
        handle = await adopter.adopt(record)
        assert isinstance(handle, VllmHandle) and handle.alive()
        assert (handle.pid, handle.endpoint.base_url, handle.endpoint.served_name) == (
            supervisor,
            base_url,
            "m:1",
        )
        waiting = asyncio.ensure_future(handle.wait())
        guardian.kill()
        await guardian.wait()
        assert await asyncio.wait_for(waiting, 15) == 0
        assert await all_gone(procs), [p.cmdline() for p in procs if running(p)]
        assert await other.adopt(record) is None  # nothing left to adopt or stop
    finally:
        for proc in (agent, guardian):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for p in procs:
            if running(p):
                p.kill()


async def test_a_supervisor_of_another_guardian_is_stopped_not_adopted(tmp_path: Path) -> None:
    from superollama.core import InstanceRecord, InstanceState
    from superollama.runtimes.vllm import VllmRuntime

    handle, procs = await started(tmp_path)  # started by this process, tied to it, no guardian
    record = InstanceRecord(
        handle.instance_id,
        "m:1",
        "local",
        "vllm",
        InstanceState.READY,
        pid=handle.pid,
        endpoint=handle.endpoint.base_url,
    )
    assert await VllmRuntime(tmp_path, guardian_pid=os.getpid(), stop_timeout=3).adopt(record) is None
    assert await all_gone(procs), [p.cmdline() for p in procs if running(p)]
