"""What a user sees when a pull meets a full disk or a silent upstream, and when the CLI cannot talk to the
server: a real ``superollama serve``, the CLI as a subprocess, the real SmolLM2 (98 MB) over loopback.

Every failure is one line on stderr (``superollama: …``), exit status 1, never a traceback; a failed job
ends at once (no hang), with its reason, in the registry; the server keeps serving.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from tests.e2e.conftest import ServerProcess
from tests.e2e.standins import ThreadedServer
from tests.failing_io import SilentServer, Tmpfs
from tests.integration.hub_standins import Hub

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CLI_GUARD = 120  # seconds: only turns a hang into a failure


class ThreadedHub(ThreadedServer):
    """The hub stand-in (HF, Ollama registry, plain files) in a thread, for a server in another process."""

    def __init__(self) -> None:
        super().__init__()
        self.hub = Hub()

    def app(self) -> web.Application:
        return self.hub.app()

    def start(self) -> ThreadedHub:
        super().start()
        self.hub.url = self.url
        return self


@pytest.fixture
def hub() -> Iterator[Hub]:
    server = ThreadedHub().start()
    try:
        yield server.hub
    finally:
        server.stop()


def run_cli(*args: str, env: dict[str, str], timeout: float = CLI_GUARD) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "superollama.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserting that it is one, and no traceback)."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("superollama: "), done.stderr
    return lines[0]


def jobs_of(server: ServerProcess) -> list[dict[str, Any]]:
    return list(server.admin("GET", "/admin/v1/jobs").json()["jobs"])


def partials(blobs: Path) -> list[str]:
    return [n for n in os.listdir(blobs) if n.endswith(".partial")] if blobs.exists() else []


# -- a home on a 40 MB filesystem --------------------------------------------------------------------------
def test_a_full_disk_fails_the_pull_and_the_server_keeps_serving(
    tmp_path: Path, tmpfs: Tmpfs, hub: Hub, smollm2_gguf: Path
) -> None:
    home = tmpfs.mount(tmp_path / "home", 40)
    server = ServerProcess(home)  # the bundled model (98 MB) is registered at start unless it cannot be
    server.log = tmp_path / "serve.log"
    server.start()
    try:
        # serve started without the bundled model, and said why
        assert server.admin("GET", "/health").status_code == 200
        assert server.admin("GET", "/admin/v1/models").json()["models"] == []
        log = server.log.read_text()
        assert "starting without the bundled model smollm2:135m: not enough disk space" in log, log

        # the size is unknown up front (chunked): the download starts, fills the disk and fails
        hub.add_file("chunked/" + NAME, smollm2_gguf).hide_length = True
        pulled = server.cli("pull", f"{hub.url}/files/chunked/{NAME}", "--name", "smol:full")
        line = one_line_error(pulled)
        assert line.startswith("superollama: pull failed: ") and "no space left" in line, line
        (job,) = jobs_of(server)
        assert job["state"] == "failed" and "no space left" in job["error"], job
        assert partials(home / "blobs") == []  # its partial file is gone: the disk has room again

        cancel = server.cli("jobs", "cancel", job["id"])
        assert "already ended (failed: " in one_line_error(cancel)

        # a download whose size is known is refused before it starts, in every protocol
        hub.add_file(NAME, smollm2_gguf)
        url = f"{hub.url}/files/{NAME}"
        refused = one_line_error(server.cli("pull", url, "--name", "smol:big"))
        assert "pull failed: not enough disk space: the download needs 98." in refused, refused
        assert f"free on {home}" in refused, refused
        admin = server.admin("POST", "/admin/v1/pull", json={"source": url, "stream": False})
        assert admin.status_code == 507 and admin.json()["error"]["code"] == "insufficient_storage"
        ollama = server.admin("POST", "/api/pull", json={"model": url})
        last = orjson.loads(ollama.text.strip().splitlines()[-1])
        assert "not enough disk space" in last["error"], ollama.text
        assert hub.gets(f"/files/{NAME}") == []  # not one byte was fetched

        # later writes work (each pull above recorded a job), and the server still answers
        assert [j["state"] for j in jobs_of(server)] == ["failed"] * 3
        assert server.admin("GET", "/health").status_code == 200
    finally:
        server.stop()


# -- silent upstreams -------------------------------------------------------------------------------------
@pytest.fixture(params=["1", "2"], ids=["one-worker", "two-workers"])
def quick_server(
    request: pytest.FixtureRequest, tmp_path: Path, silent_upstream: SilentServer
) -> Iterator[ServerProcess]:
    """A server whose pulls give up fast (read timeout 0.5 s, 2 s without progress); the Ollama registry
    it pulls bare names and ollama:// from never answers. One worker, or two (a replica passes the admin
    API, progress streams included, to the primary)."""
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(
        home,
        SUPEROLLAMA_WORKERS=request.param,
        SUPEROLLAMA_BUNDLED_MODEL="false",
        SUPEROLLAMA_PULL_CONNECT_TIMEOUT="2",
        SUPEROLLAMA_PULL_READ_TIMEOUT="0.5",
        SUPEROLLAMA_PULL_STALL_TIMEOUT="2",
        SUPEROLLAMA_OLLAMA_REGISTRY=silent_upstream.url,
    ).start()
    try:
        yield server
    finally:
        server.stop()


def test_pulls_from_silent_upstreams_fail_with_their_reason(
    quick_server: ServerProcess, silent_upstream: SilentServer, stalling_upstream: SilentServer
) -> None:
    silence = "the source sent nothing within the read timeout"
    cases = [
        (f"{silent_upstream.url}/m.gguf", f"{silence} (no progress for"),  # accepts, never answers
        # answers headers, never the body (no ETag: not resumable, so one attempt)
        (f"{stalling_upstream.url}/m.gguf", f"download interrupted: {silence}"),
        ("ollama://library/smol:1", f"{silence} (no progress for"),  # the Ollama registry is silent
    ]
    for source, reason in cases:
        line = one_line_error(quick_server.cli("pull", source, "--name", "m:silent", timeout=CLI_GUARD))
        assert line.startswith("superollama: pull failed: ") and reason in line, line
    jobs = jobs_of(quick_server)
    assert [j["state"] for j in jobs] == ["failed"] * 3
    assert all(silence in j["error"] for j in jobs), jobs
    cancel = one_line_error(quick_server.cli("jobs", "cancel", jobs[0]["id"]))
    assert f"job {jobs[0]['id']} already ended (failed: " in cancel, cancel
    assert quick_server.admin("GET", "/health").status_code == 200


# -- the CLI's own errors ---------------------------------------------------------------------------------
def cli_env(tmp_path: Path, url: str) -> dict[str, str]:
    env = {**os.environ, "SUPEROLLAMA_HOME": str(tmp_path / "home"), "SUPEROLLAMA_URL": url}
    return env


def test_no_server_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    line = one_line_error(run_cli("ls", env=cli_env(tmp_path, dead)))
    assert line == f"superollama: could not connect to {dead}: is `superollama serve` running?"


def test_a_dropped_connection_is_one_line(tmp_path: Path) -> None:
    head = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"mod'
    server = SilentServer(after=head, hang_up=True).start()
    try:
        for args in (("ls",), ("jobs", "watch", "job-x")):
            line = one_line_error(run_cli(*args, env=cli_env(tmp_path, server.url)))
            assert line.startswith(f"superollama: lost the connection to the server at {server.url}"), line
    finally:
        server.stop()


def test_a_home_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a directory")
    env = {
        **os.environ,
        "SUPEROLLAMA_HOME": str(home),
        "SUPEROLLAMA_PORT": "0",
        "SUPEROLLAMA_WORKERS": "1",
    }
    env.pop("SUPEROLLAMA_URL", None)
    served = one_line_error(run_cli("serve", env=env))
    assert served == (
        f"superollama: the home {home} is a file, not a directory (set --home or SUPEROLLAMA_HOME)"
    )
    two = one_line_error(run_cli("serve", "--workers", "2", env=env))
    assert "is a file, not a directory" in two
    # pull with no server pulls into the home itself: the same one line
    with socket.create_server(("127.0.0.1", 0)) as sock:
        env["SUPEROLLAMA_URL"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
    pulled = one_line_error(run_cli("pull", str(Path(__file__)), env=env))
    assert "is a file, not a directory" in pulled, pulled


def test_a_server_error_on_a_stream_is_one_line(tmp_path: Path) -> None:
    """A pull whose server answers an error before any progress line."""
    body = b'{"error": {"message": "the server is shutting down", "type": "x", "code": "conflict"}}'
    head = b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\n\r\n" % len(body)
    server = SilentServer(after=head + body, hang_up=True).start()
    try:
        env = cli_env(tmp_path, server.url)
        done = run_cli("jobs", "watch", "job-x", env=env)
        assert one_line_error(done) == "superollama: the server is shutting down"
    finally:
        server.stop()
