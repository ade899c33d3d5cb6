"""The CLI as a user runs it, and the instance lifecycle: load on demand, crash, restart, idle unload."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from openai import OpenAI
from tests.e2e.conftest import ServerProcess, wait_until, worker_pids

MODEL = "smollm2:135m"


def _client(server: ServerProcess, timeout: float = 120) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=timeout)


def _chat(server: ServerProcess, text: str = "Hi", max_tokens: int = 4, timeout: float = 120) -> str:
    out = _client(server, timeout).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=max_tokens
    )
    return out.choices[0].message.content or ""


def test_pull_ls_show_rm_through_the_server(server: ServerProcess, smollm2_gguf: Path) -> None:
    result = server.cli("pull", str(smollm2_gguf), "--name", "tiny:q4")
    assert result.returncode == 0, result.stderr
    assert "pulled tiny:q4" in result.stdout

    listed = json.loads(server.cli("ls", "--json").stdout)
    names = {m["name"]: m for m in listed}
    assert {"tiny:q4", MODEL} <= names.keys()
    digest = "sha256:" + hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    assert names["tiny:q4"]["digest"] == digest == names[MODEL]["digest"]  # one blob, two names
    assert len(list((server.home / "blobs").iterdir())) == 1
    assert "tiny:q4" in server.cli("ls").stdout

    shown = json.loads(server.cli("show", "tiny:q4", "--json").stdout)
    assert shown["architecture"] == "llama" and shown["quantization"] == "Q4_1"
    assert shown["context_length"] == 8192 and "im_start" in shown["metadata"]["chat_template"]
    assert "Q4_1" in server.cli("show", "tiny:q4").stdout

    assert server.cli("rm", "tiny:q4").returncode == 0
    assert "tiny:q4" not in server.cli("ls").stdout
    assert (server.home / "blobs" / ("sha256-" + digest[7:])).exists()  # still used by smollm2:135m
    missing = server.cli("show", "tiny:q4")
    assert missing.returncode == 1 and "not found" in missing.stderr.lower()
    events = server.cli("events", "--json", "--target", "tiny:q4").stdout
    assert {e["action"] for e in json.loads(events)} >= {"model.pull", "model.remove"}


def test_pull_of_a_missing_file_fails_cleanly(server: ServerProcess, tmp_path: Path) -> None:
    result = server.cli("pull", f"file://{tmp_path}/nope.gguf", "--name", "ghost:1")
    assert result.returncode == 1
    assert "ghost:1" not in server.cli("ls").stdout


def test_run_one_shot_ps_and_rm_refuses_a_loaded_model(server: ServerProcess, smollm2_gguf: Path) -> None:
    assert server.cli("pull", str(smollm2_gguf), "--name", "busy:1").returncode == 0
    result = server.cli("run", "busy:1", "Say hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    ps = json.loads(server.cli("ps", "--json").stdout)
    assert any(i["version"] == "busy:1" and i["state"] == "ready" for i in ps)
    assert "busy:1" in server.cli("ps").stdout

    refused = server.cli("rm", "busy:1")
    assert refused.returncode == 1 and "loaded" in refused.stderr
    pid = next(i["pid"] for i in ps if i["version"] == "busy:1")
    assert server.cli("rm", "busy:1", "--force").returncode == 0
    assert wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")
    assert "busy:1" not in server.cli("ls").stdout


def test_run_reads_a_piped_prompt_and_reports_unknown_models(server: ServerProcess) -> None:
    piped = server.cli("run", MODEL, input="What is 2+2?")
    assert piped.returncode == 0 and piped.stdout.strip()
    unknown = server.cli("run", "nope:1", "hi")
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr


def test_repl_keeps_the_conversation(server: ServerProcess) -> None:
    # A pseudo-terminal makes `run` start its REPL, as a person at a terminal would see it.
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "superollama.cli", "run", MODEL],
        env={**server.env, "SUPEROLLAMA_URL": server.url},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    output = b""

    def read_until(marker: bytes, count: int) -> None:
        nonlocal output
        while output.count(marker) < count:
            chunk = os.read(master, 4096)
            if not chunk:
                break
            output += chunk

    try:
        read_until(b">>> ", 1)
        os.write(master, b"Hello\n")
        read_until(b">>> ", 2)
        os.write(master, b"/clear\n")
        read_until(b">>> ", 3)
        os.write(master, b"/bye\n")
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = output.decode(errors="replace")
    assert "Cleared session context" in text
    answer = text.split("Hello", 1)[1].split(">>> ", 1)[0]
    assert answer.strip()


def test_offline_pull_then_serve(fresh_server: ServerProcess, smollm2_gguf: Path) -> None:
    result = fresh_server.cli("pull", str(smollm2_gguf), "--name", "offline:1")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "pulling into" in result.stdout
    fresh_server.start()
    names = [m["name"] for m in json.loads(fresh_server.cli("ls", "--json").stdout)]
    assert "offline:1" in names and MODEL in names
    assert (
        _client(fresh_server)
        .chat.completions.create(
            model="offline:1", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        .choices
    )


def test_concurrent_first_requests_share_one_load(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    results: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(_chat(fresh_server))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 6
    loads = fresh_server.admin("GET", "/admin/v1/events", params={"action": "instance.load"}).json()["events"]
    assert [e["result"] for e in loads] == ["ok"]
    assert len(fresh_server.instances()) == 1


def test_killed_instance_fails_in_flight_requests_then_reloads(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    client = _client(fresh_server)
    assert _chat(fresh_server)
    (inst,) = fresh_server.instances()
    old_pid = int(inst["pid"])  # type: ignore[call-overload]

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon"}],
        max_tokens=2000,
        stream=True,
    )
    outcomes: list[str] = []

    def non_stream() -> None:
        try:
            # up to 2,000 tokens again on the replacement, after its load: minutes on a loaded machine
            _chat(fresh_server, "Write a long poem", max_tokens=2000, timeout=600)
            outcomes.append("ok")
        except openai.APIStatusError as exc:
            outcomes.append(str(exc.status_code))

    blocker = threading.Thread(target=non_stream)
    blocker.start()
    first = next(iter(stream))
    assert first.choices is not None
    os.kill(old_pid, signal.SIGKILL)
    with pytest.raises(openai.APIError) as info:
        for _chunk in stream:
            pass
    assert "failed" in str(info.value.message)  # the stream had answered: it fails with its instance
    # The plain request had no answer byte yet: it goes to the replacement and succeeds (issue 10, item 10).
    blocker.join(600)
    assert not blocker.is_alive() and outcomes == ["ok"]

    assert _chat(fresh_server)  # served by the replacement
    (again,) = fresh_server.instances()
    assert again["pid"] != old_pid
    crashed = fresh_server.admin("GET", "/admin/v1/events", params={"action": "instance.crashed"}).json()
    assert crashed["events"] and crashed["events"][0]["target"] == MODEL


def test_restart_keeps_the_registry_and_leaves_no_orphans(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    assert _chat(fresh_server)
    (inst,) = fresh_server.instances()
    pid = int(inst["pid"])  # type: ignore[call-overload]
    assert fresh_server.stop(signal.SIGTERM) == 0
    assert not psutil.pid_exists(pid)

    fresh_server.start()
    assert MODEL in fresh_server.cli("ls").stdout
    assert _chat(fresh_server)
    (inst,) = fresh_server.instances()
    pid = int(inst["pid"])  # type: ignore[call-overload]

    fresh_server.stop(signal.SIGINT)
    assert not psutil.pid_exists(pid)


def test_sigkill_of_serve_leaves_no_orphans_and_restart_replaces(fresh_server: ServerProcess) -> None:
    fresh_server.start()
    assert _chat(fresh_server)
    (inst,) = fresh_server.instances()
    pid = int(inst["pid"])  # type: ignore[call-overload]
    fresh_server.stop(signal.SIGKILL)
    assert wait_until(lambda: not psutil.pid_exists(pid), timeout=10)
    assert pid not in worker_pids()

    fresh_server.start()
    replaced = fresh_server.admin("GET", "/admin/v1/events", params={"action": "instance.replaced"}).json()
    assert [e["detail"]["instance"] for e in replaced["events"]] == [inst["id"]]
    assert _chat(fresh_server)


def test_idle_instance_unloads_after_keep_alive(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, SUPEROLLAMA_KEEP_ALIVE="1").start()
    try:
        assert _chat(server)
        (inst,) = server.instances()
        assert wait_until(lambda: server.instances() == [], timeout=15)
        assert wait_until(lambda: not psutil.pid_exists(int(inst["pid"])), timeout=10)  # type: ignore[call-overload]
        assert _chat(server)  # loads again on demand
    finally:
        server.stop()


def test_client_disconnect_ends_the_upstream_request(server: ServerProcess) -> None:
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell a very long story"}],
            "max_tokens": 4000,
            "stream": True,
        },
        timeout=60,
    ) as response:
        for _line in response.iter_lines():
            break
    assert wait_until(lambda: all(i["in_flight"] == 0 for i in server.instances()), timeout=10)
