"""A real ``superollama serve`` in a child process, on a free loopback port, with its own home."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.e2e.standins import StandIn
from tests.waiting import wait_until_sync

_LISTENING = re.compile(r"listening on (http://\S+)")


class ServerProcess:
    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "SUPEROLLAMA_HOME": str(home),
            "SUPEROLLAMA_PORT": "0",
            "SUPEROLLAMA_HOST": "127.0.0.1",
            "SUPEROLLAMA_LLAMACPP_PARALLEL": "4",
            "SUPEROLLAMA_LLAMACPP_CTX": "4096",
            "SUPEROLLAMA_WORKERS": "1",  # one process unless a test asks for more (test_workers.py)
            **env,
        }
        self.env.pop("SUPEROLLAMA_URL", None)
        self.proc: subprocess.Popen[str] | None = None
        # what the server and the CLI run under (``ip netns exec NS``: another host)
        self.wrap: list[str] = []
        self.args: list[str] = []  # ``serve``'s options
        self.url = ""
        self.log = home / "serve.log"

    def start(self, timeout: float = 60) -> ServerProcess:
        """``superollama serve`` with ``self.args`` (its options), until it says where it listens."""
        self.proc = subprocess.Popen(
            [*self.wrap, sys.executable, "-m", "superollama.cli", "serve", *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self.log.open("a"),
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if match := _LISTENING.search(line):
                self.url = match.group(1)
                return self
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"server did not start:\n{self.log.read_text()[-4000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
        return code

    def admin(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(method, self.url + path, timeout=120, **kwargs)  # type: ignore[arg-type]

    def instances(self) -> list[dict[str, object]]:
        return list(self.admin("GET", "/admin/v1/instances").json()["instances"])

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "SUPEROLLAMA_URL": self.url}
        return subprocess.run(
            [*self.wrap, sys.executable, "-m", "superollama.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )


def worker_pids() -> set[int]:
    """Every llama.cpp worker process on this machine started from this checkout's package."""
    pids = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "superollama.runtimes.llamacpp_worker" in cmdline:
            pids.add(proc.pid)
    return pids


def wait_until(predicate: Callable[[], object], timeout: float = 20, interval: float = 0.1) -> bool:
    """This tier's boolean form of ``tests.waiting.wait_until_sync``: True once ``predicate()`` holds,
    False after ``timeout`` seconds (the caller asserts, with its own message)."""
    try:
        wait_until_sync(predicate, timeout=timeout, interval=interval)
    except AssertionError:
        return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a module, the bundled SmolLM2 registered as smollm2:135m, 1 MiB body limit."""
    home = tmp_path_factory.mktemp("home")
    srv = ServerProcess(home, SUPEROLLAMA_MAX_BODY_BYTES=str(1024 * 1024)).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own for a test that restarts, kills or reconfigures it (not started yet)."""
    home = tmp_path / "home"
    home.mkdir()
    srv = ServerProcess(home)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    """An OpenAI-compatible stand-in upstream (tests/e2e/standins.py), stopped at the end."""
    server = StandIn().start()
    try:
        yield server
    finally:
        server.stop()


# -- the web UI's browser tests (tests/e2e/test_ui*.py): one server and one browser for the session -----

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"


class UiServer:
    """A server shared by the browser tests, with an admin key (so the UI needs a sign-in)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.url = server.url
        created = server.admin("POST", "/admin/v1/keys", json={"name": "ui-admin", "role": "admin"})
        assert created.status_code == 201, created.text
        self.admin_key = str(created.json()["key"])

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_key}", **kwargs.pop("headers", {})}
        return self.server.admin(method, path, headers=headers, **kwargs)

    def key(self, role: str, name: str) -> str:
        created = self.api("POST", "/admin/v1/keys", json={"name": name, "role": role})
        assert created.status_code == 201, created.text
        return str(created.json()["key"])


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    roots = tmp_path_factory.mktemp("ui-roots")  # a second storage root, for moving a version there
    srv = ServerProcess(tmp_path_factory.mktemp("ui-home"), SUPEROLLAMA_STORAGE_ROOTS=f"fast={roots}").start()
    try:
        yield UiServer(srv)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (headless).

    Module scope, not session: Playwright's sync API marks its own asyncio loop as running in the main
    thread for as long as it is started, and every async test that pytest-asyncio runs meanwhile fails
    with "Runner.run() cannot be called from a running event loop". Ending it with the browser tests'
    module keeps the async tests that follow (in any order) working; a launch costs about a second.
    """
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "the browser tests need chromium: apt-get install -y chromium"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()
