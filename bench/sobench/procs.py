"""Processes the harness starts: ports, pinning, readiness, RSS, and stopping every one of them.

Each service runs in its own session (``start_new_session``) so Ctrl-C reaches only the harness, which
then stops each service's process group by its id in a ``finally``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

__all__ = ["Service", "cpu_tree_s", "free_port", "http_json", "pin", "rss_tree_mb", "wait_ok"]

HOST = "127.0.0.1"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pin(cpu: int | None) -> list[str]:
    """``taskset -c CPU`` (nothing when the machine has a single CPU or taskset is missing)."""
    if cpu is None or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


def http_json(
    method: str,
    url: str,
    body: object | None = None,
    timeout: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes, Mapping[str, str]]:
    """One request on a fresh connection: (status, body, headers). Loopback only."""
    parsed = url.split("://", 1)[1]
    hostport, _, path = parsed.partition("/")
    host, _, port = hostport.partition(":")
    if host not in (HOST, "localhost"):
        raise ValueError(f"loopback only: {url}")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = {**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})}
        conn.request(method, "/" + path, body=data, headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def wait_ok(
    url: str,
    started: float,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
) -> float:
    """Poll GET ``url`` every 5 ms until a 200; seconds since ``started`` (a ``time.monotonic()``)."""
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before answering {url}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _, _ = http_json("GET", url, timeout=1.0, headers=headers)
            if status == 200:
                return time.monotonic() - started
        time.sleep(0.005)
    raise TimeoutError(f"no 200 from {url} within {timeout:.0f} s")


def rss_tree_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB (10^6 bytes)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total / 1e6


def cpu_tree_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


class Service:
    """One process the harness started; ``stop()`` ends its whole process group (idempotent)."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str | None] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """``env`` adds to the harness's environment; a None value removes that variable."""
        self.name = name
        self.log_path = log_dir / f"{name.replace(' ', '_').replace('/', '_')}.log"
        self._log = self.log_path.open("wb")
        self._stopped = False
        full = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                full.pop(key, None)
            else:
                full[key] = value
        self.started = time.monotonic()
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        return rss_tree_mb(self.proc.pid)

    def cpu_s(self) -> float:
        return cpu_tree_s(self.proc.pid)

    def log_tail(self, lines: int = 15) -> str:
        """The last non-empty lines of the log, without terminal colours."""
        with contextlib.suppress(OSError):
            text = _ANSI.sub("", self.log_path.read_text(errors="replace"))
            return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
        return ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the group (its leader still alive, so the id is ours), SIGKILL after ``grace``;
        then any descendant seen before that outlived it (psutil checks the pid was not reused)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(5)
        alive = [kid for kid in kids if kid.is_running()]
        for kid in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                kid.kill()
        psutil.wait_procs(alive, timeout=5)
        self._log.close()

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
