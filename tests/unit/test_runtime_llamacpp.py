"""The llama.cpp runtime without llama.cpp: command line, handshake parsing, PID ownership, cheap import."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from superollama.core import Artifact, Endpoint, InstanceHandle, InstanceSpec
from superollama.runtimes import WORKER_MODULE, LlamaCppRuntime, WorkerLaunch
from superollama.runtimes._ready import FAILED, READY, format_failed, format_ready, parse_line
from superollama.runtimes.process import _is_worker_cmdline


def spec(fmt: str = "gguf", **options: object) -> InstanceSpec:
    return InstanceSpec(
        "inst-1", "smollm2:135m", Artifact("smollm2", fmt, Path("/m/x.gguf")), "llamacpp", options=options
    )


def test_accepts_gguf_only(tmp_path: Path) -> None:
    runtime = LlamaCppRuntime(tmp_path)
    assert runtime.accepts(spec("gguf").artifact)
    assert runtime.accepts(spec("GGUF").artifact)
    assert not runtime.accepts(spec("safetensors").artifact)
    assert (runtime.name, runtime.provider) == ("llamacpp", "openai")


def test_command_carries_the_spec_and_config(tmp_path: Path) -> None:
    runtime = LlamaCppRuntime(tmp_path, ctx=1024, parallel=3, threads=2, python="/py")
    argv = runtime.command(spec())
    assert argv[:3] == ("/py", "-m", WORKER_MODULE)
    pairs = dict(itertools.pairwise(argv))
    assert pairs["--instance-id"] == "inst-1"
    assert pairs["--model"] == "/m/x.gguf"
    assert pairs["--alias"] == "smollm2:135m"
    assert (pairs["--ctx"], pairs["--parallel"], pairs["--threads"]) == ("1024", "3", "2")
    assert "--embedding" in argv
    assert "--no-embedding" in runtime.command(spec(embedding=False))
    assert "--no-embedding" in runtime.command(spec(embedding="false"))
    assert _is_worker_cmdline(list(argv), "inst-1", WORKER_MODULE)


def test_a_projector_goes_to_the_worker_as_mmproj(tmp_path: Path) -> None:
    runtime = LlamaCppRuntime(tmp_path)
    assert "--mmproj" not in runtime.command(spec())
    art = Artifact("vlm", "gguf", Path("/m/vlm.gguf"), projector=Path("/m/mmproj.gguf"))
    argv = runtime.command(InstanceSpec("inst-2", "vlm:q8", art, "llamacpp"))
    assert dict(itertools.pairwise(argv))["--mmproj"] == "/m/mmproj.gguf"


async def test_start_goes_through_the_injected_spawn(tmp_path: Path) -> None:
    launches: list[WorkerLaunch] = []

    class Fake:
        instance_id = "inst-1"
        pid = 1
        endpoint = Endpoint("http://x", "openai", "smollm2:135m")

        def alive(self) -> bool:
            return True

        async def wait(self) -> int:
            return 0

        async def stop(self, timeout: float) -> None:
            return None

    async def spawn(launch: WorkerLaunch) -> InstanceHandle:
        launches.append(launch)
        return Fake()

    runtime = LlamaCppRuntime(tmp_path / "logs", ready_timeout=7, spawn=spawn)
    handle = await runtime.start(spec())
    assert isinstance(handle, Fake)
    (launch,) = launches
    assert launch.log_path == tmp_path / "logs" / "inst-1.log"
    assert (launch.served_name, launch.provider, launch.ready_timeout) == ("smollm2:135m", "openai", 7)


@pytest.mark.parametrize(
    ("cmdline", "ours"),
    [
        (["python", "-m", WORKER_MODULE, "--instance-id", "a"], True),
        (["python", "-m", WORKER_MODULE, "--instance-id=a"], True),
        (["python", "-m", WORKER_MODULE, "--instance-id", "b"], False),
        (["python", "-m", "other.module", "--instance-id", "a"], False),
        (["sleep", "60"], False),
        ([], False),
    ],
)
def test_worker_cmdline_recognition(cmdline: list[str], ours: bool) -> None:
    assert _is_worker_cmdline(cmdline, "a", WORKER_MODULE) is ours


def test_handshake_lines_round_trip() -> None:
    ready = parse_line(format_ready("http://127.0.0.1:1", 42))
    assert ready is not None
    assert (ready.kind, ready.payload) == (READY, {"address": "http://127.0.0.1:1", "pid": 42})
    failed = parse_line(format_failed("boom"))
    assert failed is not None
    assert (failed.kind, failed.payload) == (FAILED, {"error": "boom"})
    assert parse_line("llama.cpp says hi") is None
    assert parse_line(f"{READY} not-json") is None


def test_importing_runtimes_stays_cheap() -> None:
    code = (
        "import sys, superollama.runtimes; "
        "print(sorted(m for m in ('aiohttp', 'psutil', 'xllamacpp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
