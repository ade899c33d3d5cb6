"""A Ray head this process starts and owns (``serve --cluster`` without ``cluster_address``).

``ray start --head --block`` runs as our child: with ``--block`` it stays in the foreground and, when it
gets SIGTERM, stops the Ray processes it started (GCS, raylet, …) — so the head is stopped by its PID,
never by ``ray stop`` (which kills every Ray process on the machine by name). Its ports bind to
``cluster_host`` (loopback by default, never all interfaces unless named); the head is also a node
(``so_node:NODE_NAME``) that instances may be placed on.

The head's PID and address are written to ``TEMP_DIR/head.json``. A control plane killed without its
cleanup leaves the head running (in its own session: its instances keep serving); the next start finds
it there, answering, and takes it over instead of starting a second head.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import psutil

__all__ = ["RAY_ENV", "RayHead", "stop_ray_start"]

log = logging.getLogger("superollama.cluster")

# Ray's defaults this project changes (each process that starts or joins a cluster takes them):
# no usage report, and a loopback address kept as given (Ray otherwise rewrites 127.0.0.1 to the
# machine's own address).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


# The control plane is a Ray driver: without this, Ray's C++ failure handler takes SIGTERM (it logs a
# "crash" and ends the process) before our own shutdown has stopped what it started.
DRIVER_ENV = {**RAY_ENV, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}


def ray_env_defaults() -> None:
    """This process's Ray environment (a driver's), before Ray is imported."""
    for key, value in DRIVER_ENV.items():
        os.environ.setdefault(key, value)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RayHead:
    def __init__(self, host: str, node_name: str, temp_dir: Path, *, start_timeout: float = 60.0) -> None:
        self.host = host
        self.node_name = node_name
        self.temp_dir = temp_dir
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._adopted_pid: int | None = None  # a head an earlier control plane started

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def _record(self) -> Path:
        return self.temp_dir / "head.json"

    async def _adopt(self) -> bool:
        try:
            saved = json.loads(self._record.read_text())
            pid, host, port = int(saved["pid"]), str(saved["host"]), int(saved["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if host != self.host or not _is_ray_start(pid):
            return False
        self.port = port
        if not await self._answers():
            return False
        self._adopted_pid = pid
        log.info("took over the Ray head (pid %d) on %s", pid, self.address)
        return True

    async def start(self) -> str:
        """Start the head (or take over the one an earlier control plane left) and return its address
        once its control store answers."""
        if await self._adopt():
            return self.address
        ray_exe = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        self.port = _free_port(self.host)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            ray_exe,
            "start",
            "--head",
            "--block",
            f"--node-ip-address={self.host}",
            f"--port={self.port}",
            f"--resources={json.dumps({f'so_node:{self.node_name}': 1})}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
        ]
        log_path = self.temp_dir / "head.log"
        with log_path.open("ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, **RAY_ENV},
                start_new_session=True,  # our SIGTERM reaches it; a Ctrl-C on the terminal does not
            )
        deadline = asyncio.get_running_loop().time() + self.start_timeout
        while not await self._answers():
            if self._proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
                await self.stop()
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the Ray head did not start on {self.address}:\n{tail}")
            await asyncio.sleep(0.2)
        self._record.write_text(json.dumps({"pid": self._proc.pid, "host": self.host, "port": self.port}))
        log.info("Ray head (pid %d) listening on %s", self._proc.pid, self.address)
        return self.address

    async def _answers(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 1.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def stop(self, grace: float = 20.0) -> None:
        if self._adopted_pid is not None:
            await _stop_pid(self._adopted_pid, grace)
            self._adopted_pid = None
            return
        if self._proc is not None:
            await stop_ray_start(self._proc, grace)


async def stop_ray_start(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to a ``ray start --block`` child (it stops the Ray processes it started), SIGKILL to its
    process group after ``grace`` seconds."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def _is_ray_start(pid: int) -> bool:
    """Whether ``pid`` is a ``ray start --head --block`` (never signal a PID reused by something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"start" in cmdline and b"--head" in cmdline and b"--block" in cmdline


async def _stop_pid(pid: int, grace: float) -> None:
    if not _is_ray_start(pid):
        return
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        await asyncio.to_thread(proc.wait, grace)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
