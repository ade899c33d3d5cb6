"""Child-process helpers shared by every runtime that runs one worker process per instance.

A worker is started with :func:`spawn_worker`: its stdout is a control pipe on which it prints one
handshake line (see ``_ready``), its stderr goes to a per-instance log file, then its ``/health`` is polled
until 200. Any failure before that kills and reaps the process and raises ``ModelLoadFailed`` with the
reason and the tail of the log.

Workers run in their own session (a Ctrl-C on the terminal reaches only the agent, which stops them) and
ask the kernel to SIGKILL them when their parent dies (``PR_SET_PDEATHSIG``). That signal follows the
*thread* that forked them: spawn from the thread that runs the event loop for the agent's whole life.

After an agent restart, :func:`is_our_process` tells a leftover worker of ours from an unrelated process
that reuses its PID, and :func:`kill_leftover` stops it. A runtime given a *guardian* (the master of
``serve --workers N``) starts its workers with ``--guardian-pid``: they outlive the agent process and die
with the master instead (``_child.settle_lifetime``), and :func:`adopt_worker` takes a healthy one of
them back after an agent restart (``AdoptedHandle``: not our child, so its exit is watched on a pidfd).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

from superollama.core import Endpoint, InstanceHandle, InstanceRecord
from superollama.errors import ModelLoadFailed
from superollama.runtimes._ready import FAILED, READY, parse_line

__all__ = [
    "AdoptedHandle",
    "ProcessHandle",
    "SpawnFn",
    "WorkerLaunch",
    "adopt_worker",
    "is_our_process",
    "kill_leftover",
    "log_tail",
    "spawn_worker",
]

log = logging.getLogger(__name__)

WORKER_PACKAGE = "superollama.runtimes."
_HEALTH_INTERVAL = 0.1
_HEALTH_REQUEST_TIMEOUT = 2.0
_GONE_POLL = 0.05


@dataclass(frozen=True)
class WorkerLaunch:
    """Everything needed to start one worker process and recognise it as healthy."""

    argv: tuple[str, ...]
    instance_id: str
    log_path: Path
    served_name: str
    provider: str
    ready_timeout: float
    health_path: str = "/health"
    env: Mapping[str, str] | None = None


SpawnFn = Callable[[WorkerLaunch], Awaitable[InstanceHandle]]
"""How a runtime starts a worker; :func:`spawn_worker` by default, swappable in tests."""


class ProcessHandle:
    """A running worker process of one instance (implements ``core.InstanceHandle``)."""

    def __init__(
        self, instance_id: str, process: asyncio.subprocess.Process, endpoint: Endpoint, log_path: Path
    ) -> None:
        self.instance_id = instance_id
        self.pid = process.pid
        self.endpoint = endpoint
        self.log_path = log_path
        self._process = process

    def __repr__(self) -> str:
        return f"ProcessHandle({self.instance_id!r}, pid={self.pid}, returncode={self.returncode})"

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited and been reaped, else None."""
        return self._process.returncode

    def alive(self) -> bool:
        return self._process.returncode is None

    async def wait(self) -> int:
        return await self._process.wait()

    async def stop(self, timeout: float) -> None:
        """SIGTERM, wait up to ``timeout`` s, SIGKILL, reap. Idempotent; safe concurrently and after death."""
        await terminate(self._process, grace=timeout)


async def terminate(process: asyncio.subprocess.Process, *, grace: float) -> None:
    """Stop and reap ``process`` (SIGTERM, then SIGKILL after ``grace`` seconds)."""
    if process.returncode is None:
        _send(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            log.warning("pid %d did not exit %.1f s after SIGTERM: SIGKILL", process.pid, grace)
            _send(process, signal.SIGKILL)
    await process.wait()


def _send(process: asyncio.subprocess.Process, sig: int) -> None:
    # asyncio refuses (ProcessLookupError) once the process is reaped, so a reused PID is never signalled.
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


async def spawn_worker(launch: WorkerLaunch) -> ProcessHandle:
    """Start a worker, wait for its handshake and a healthy ``/health``; raise ``ModelLoadFailed``."""
    launch.log_path.parent.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + launch.ready_timeout
    with launch.log_path.open("ab") as log_file:
        log_offset = log_file.tell()
        try:
            process = await asyncio.create_subprocess_exec(
                *launch.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
                env=dict(launch.env) if launch.env is not None else None,
            )
        except OSError as exc:
            raise ModelLoadFailed(f"{launch.instance_id}: cannot start {launch.argv[0]}: {exc}") from exc
    log.info("instance %s: started pid %d, log %s", launch.instance_id, process.pid, launch.log_path)
    try:
        try:
            address = await asyncio.wait_for(
                _read_handshake(process, launch, log_offset), max(0.0, deadline - loop.time())
            )
            await _wait_healthy(process, address + launch.health_path, deadline, launch, log_offset)
        except TimeoutError:
            raise ModelLoadFailed(
                f"{launch.instance_id}: did not become ready in {launch.ready_timeout:g} s"
                + _tail_suffix(launch.log_path, log_offset)
            ) from None
    except BaseException:
        # Kill at once (no grace: it never served), then reap even if we are being cancelled.
        _send(process, signal.SIGKILL)
        await asyncio.shield(process.wait())
        raise
    endpoint = Endpoint(
        base_url=address.rstrip("/"), provider=launch.provider, served_name=launch.served_name
    )
    return ProcessHandle(launch.instance_id, process, endpoint, launch.log_path)


async def _read_handshake(process: asyncio.subprocess.Process, launch: WorkerLaunch, log_offset: int) -> str:
    assert process.stdout is not None
    while True:
        raw = await process.stdout.readline()
        if not raw:  # EOF before any handshake: the worker is exiting
            code = await process.wait()
            raise ModelLoadFailed(
                f"{launch.instance_id}: worker exited with code {code} before it was ready"
                + _tail_suffix(launch.log_path, log_offset)
            )
        sig = parse_line(raw.decode("utf-8", "replace"))
        if sig is None:
            continue
        if sig.kind == FAILED:
            await process.wait()
            reason = str(sig.payload.get("error") or "unknown error")
            raise ModelLoadFailed(
                f"{launch.instance_id}: {reason}" + _tail_suffix(launch.log_path, log_offset)
            )
        if sig.kind == READY:
            address = sig.payload.get("address")
            if isinstance(address, str) and address.startswith("http"):
                return address
            raise ModelLoadFailed(f"{launch.instance_id}: bad handshake from worker: {sig.payload!r}")


async def _wait_healthy(
    process: asyncio.subprocess.Process, url: str, deadline: float, launch: WorkerLaunch, log_offset: int
) -> None:
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=_HEALTH_REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            if process.returncode is not None:
                raise ModelLoadFailed(
                    f"{launch.instance_id}: worker exited with code {process.returncode} "
                    "before it was healthy" + _tail_suffix(launch.log_path, log_offset)
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            if loop.time() + _HEALTH_INTERVAL > deadline:
                raise TimeoutError
            await asyncio.sleep(_HEALTH_INTERVAL)


def log_tail(path: Path, offset: int = 0, *, lines: int = 8, max_chars: int = 2000) -> str:
    """The last ``lines`` non-empty lines of ``path`` written after byte ``offset`` ('' if none)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(offset, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-max_chars:]


def _tail_suffix(path: Path, offset: int) -> str:
    tail = log_tail(path, offset)
    return f"; log {path} ends with:\n{tail}" if tail else f"; log: {path}"


def _is_worker_cmdline(cmdline: Sequence[str], instance_id: str, module: str | None) -> bool:
    has_module = any(
        arg == "-m" and i + 1 < len(cmdline) and _module_matches(cmdline[i + 1], module)
        for i, arg in enumerate(cmdline)
    )
    has_id = any(
        (arg == "--instance-id" and i + 1 < len(cmdline) and cmdline[i + 1] == instance_id)
        or arg == f"--instance-id={instance_id}"
        for i, arg in enumerate(cmdline)
    )
    return has_module and has_id


def _module_matches(name: str, module: str | None) -> bool:
    return name == module if module is not None else name.startswith(WORKER_PACKAGE)


def _our_process(pid: int, instance_id: str, module: str | None) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = proc.cmdline()
    except psutil.Error:
        return None
    return proc if _is_worker_cmdline(cmdline, instance_id, module) else None


def is_our_process(pid: int, instance_id: str, *, module: str | None = None) -> bool:
    """Whether ``pid`` is a live worker of ours for ``instance_id``: ``python -m <module> --instance-id ID``
    (``module`` None: any ``superollama.runtimes.*`` worker). False for a PID reused by anything else."""
    return _our_process(pid, instance_id, module) is not None


async def kill_leftover(pid: int, instance_id: str, grace: float, *, module: str | None = None) -> bool:
    """Stop a leftover worker (SIGTERM, SIGKILL after ``grace`` s) if and only if it is ours.

    Returns True when it was ours (and is now gone), False when ``pid`` is not a worker of ours for
    ``instance_id`` (nothing is signalled). psutil checks the process' start time before each signal,
    so a PID reused meanwhile is never hit.
    """
    proc = _our_process(pid, instance_id, module)
    if proc is None:
        return False
    log.info("instance %s: stopping leftover worker pid %d", instance_id, pid)
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.terminate()
    if not await _gone(proc, within=grace):
        log.warning("leftover pid %d did not exit %.1f s after SIGTERM: SIGKILL", pid, grace)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
        await _gone(proc, within=5.0)
    return True


async def _gone(proc: psutil.Process, *, within: float) -> bool:
    """Wait until ``proc`` has exited (a zombie counts: it runs no more); True if it did in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_GONE_POLL)


class AdoptedHandle:
    """A worker of ours an earlier agent started (implements ``core.InstanceHandle``)."""

    def __init__(self, instance_id: str, proc: psutil.Process, endpoint: Endpoint) -> None:
        self.instance_id = instance_id
        self.pid = proc.pid
        self.endpoint = endpoint
        self._proc = proc

    def __repr__(self) -> str:
        return f"AdoptedHandle({self.instance_id!r}, pid={self.pid})"

    def alive(self) -> bool:
        try:
            return self._proc.is_running() and self._proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    async def wait(self) -> int:
        """Until the process has exited (its exit status is its parent's to read: 0 is reported)."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return 0
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            if self.alive():
                await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return 0

    async def stop(self, timeout: float) -> None:
        """SIGTERM, SIGKILL after ``timeout`` s (psutil checks the start time: a reused PID is never hit)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            self._proc.terminate()
        if not await _gone(self._proc, within=timeout):
            with contextlib.suppress(psutil.NoSuchProcess):
                self._proc.kill()
            await _gone(self._proc, within=5.0)


async def adopt_worker(
    record: InstanceRecord, *, module: str, provider: str, guardian_pid: int | None, grace: float
) -> InstanceHandle | None:
    """Take back the worker of ``record`` when it is ours, started for this ``guardian_pid`` and healthy
    (a handle to keep); else stop it if it is ours (None). Never touches another process."""
    if record.pid is None:
        return None
    proc = _our_process(record.pid, record.id, module)
    if proc is not None and guardian_pid is not None and record.endpoint:
        with contextlib.suppress(psutil.Error):
            guarded = f"--guardian-pid={guardian_pid}" in _pairs(proc.cmdline())
            if guarded and await _healthy(record.endpoint + "/health"):
                log.info("instance %s: adopted worker pid %d at %s", record.id, record.pid, record.endpoint)
                endpoint = Endpoint(base_url=record.endpoint, provider=provider, served_name=record.version)
                return AdoptedHandle(record.id, proc, endpoint)
    if await kill_leftover(record.pid, record.id, grace, module=module):
        log.info("instance %s: stopped leftover worker pid %d", record.id, record.pid)
    return None


def _pairs(cmdline: Sequence[str]) -> set[str]:
    """``--flag value`` and ``--flag=value`` of a command line, as ``--flag=value``."""
    pairs = {arg for arg in cmdline if arg.startswith("--") and "=" in arg}
    pairs.update(f"{a}={b}" for a, b in itertools.pairwise(cmdline) if a.startswith("--"))
    return pairs


async def _healthy(url: str) -> bool:
    timeout = aiohttp.ClientTimeout(total=_HEALTH_REQUEST_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
