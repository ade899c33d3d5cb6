"""The master of ``superollama serve --workers N``: binds the port N times, forks N workers, keeps them up.
With ``--cluster`` it runs even for N = 1 (one primary, no replica): the agent process is then the Ray
driver, which Ray ends when its head stays away, and the master starts it again.

Why fork (and not spawn with the sockets passed): the master has imported the whole app when it forks, so
a worker starts without importing anything (pages shared copy-on-write), inherits its socket, the shared
rate-limit table (an anonymous shared mapping) and its ready pipe as plain objects, and asks for
``PR_SET_PDEATHSIG`` first thing. Forking is safe because the master never starts an event loop or a
thread: its loop is ``select`` on a signal wake-up pipe and the workers' ready pipes.

- Sockets: N TCP sockets with ``SO_REUSEPORT`` on one address (the first on the requested port, 0 allowed;
  the others on the port it got); the kernel spreads new connections over them. The master keeps them
  open, so a restarted worker serves the same socket and connections that arrive meanwhile wait in its
  backlog instead of being refused.
- Worker 0 is the primary (the whole app), 1..N-1 are replicas (the data plane; see ``replica``). One
  more process, the node agent (``agent_process``), owns the model processes: started first, restarted
  like a worker, stopped last, so a worker's death (the primary's included) costs no model.
- Ready: each worker writes one byte on its pipe once it serves; the master prints the
  ``listening on URL`` line and writes ``server.json`` only when all are ready. A worker that exits before
  it was ready the first time fails the start (its exit status becomes the master's: 2 for an unsafe
  bind, as with one process).
- Signals: SIGTERM or SIGINT stop the replicas first (their requests finish, their usage is written), then
  the primary, then the agent (it stops the model instances), then the master exits 0. Workers run in
  their own process group, so a Ctrl-C on the terminal reaches only the master, which orders the shutdown.
- A worker that dies unexpectedly is restarted, after 0.5 s doubling up to 30 s while it keeps dying
  quickly (reset once it stayed up 30 s), and the restart is logged.
- Workers and the agent ask the kernel to SIGKILL them when the master dies; the model processes watch
  the master too (it is their guardian: they outlive the agent, which re-adopts them, not the master).
  So a SIGKILL of the master leaves nothing behind. The master is a child subreaper: a model process
  whose agent died is re-parented to it and reaped by it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import orjson

from superollama import __version__
from superollama.security.shared_limits import SharedLimitTable
from superollama.settings import Settings
from superollama.workers.context import WorkerContext
from superollama.workers.paths import RunPaths
from superollama.workers.posix import (
    become_subreaper,
    bind_reuseport,
    describe_exit,
    master_logging,
    set_pdeathsig,
    url_of,
)

if TYPE_CHECKING:
    from superollama.workers.agent_process import AgentFactory

__all__ = ["AGENT", "SERVER_FILE", "WorkerMain", "supervise"]

log = logging.getLogger("superollama.workers")

SERVER_FILE = "server.json"
WorkerMain = Callable[[Settings, WorkerContext], None]
AGENT = -1  # the agent process's slot index (workers are 0..N-1)
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None
_FIRST_DELAY = 0.5
_MAX_DELAY = 30.0
_STABLE = 30.0  # seconds up after which a worker's next death restarts it at the first delay again
_REPLICA_GRACE = 30.0  # seconds replicas get to finish after SIGTERM
_PRIMARY_GRACE = 60.0  # the primary also stops its instances


@dataclass
class _Slot:
    index: int
    pid: int = 0
    ready_fd: int = -1
    ready: bool = False
    ever_ready: bool = False
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    exit_code: int | None = None


@dataclass
class _Master:
    settings: Settings
    sockets: list[socket.socket]
    paths: RunPaths
    limits: SharedLimitTable | None
    primary: WorkerMain
    replica: WorkerMain
    agent: WorkerMain
    slots: list[_Slot] = field(default_factory=list)
    stop_signal: int | None = None
    wake_r: int = -1
    wake_w: int = -1
    server_file: Path | None = None

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, url: str, server_file: Path) -> int:
        self.slots = [_Slot(AGENT), *(_Slot(i) for i in range(len(self.sockets)))]
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        previous = self._install_signals()
        try:
            for slot in self.slots:
                self._start(slot)
            code = self._until_ready()
            if code is not None:
                self._shutdown()
                return code
            server_file.write_bytes(orjson.dumps({"url": url, "pid": os.getpid(), **self._pids()}))
            self.server_file = server_file
            print(
                f"Super Ollama {__version__} listening on {url} (home {self.settings.home}, "
                f"{len(self.sockets)} worker{'s' if len(self.sockets) != 1 else ''})",
                flush=True,
            )
            self._supervise()
            self._shutdown()
            return 0
        finally:
            signal.set_wakeup_fd(-1)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self.wake_r)
            os.close(self.wake_w)

    def _install_signals(self) -> dict[signal.Signals, _SignalHandler]:
        def stop(signum: int, _frame: FrameType | None) -> None:
            if self.stop_signal is None:
                self.stop_signal = signum

        def child(_signum: int, _frame: FrameType | None) -> None:
            pass  # the wake-up fd does the work

        previous: dict[signal.Signals, _SignalHandler] = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, stop),
            signal.SIGINT: signal.signal(signal.SIGINT, stop),
            signal.SIGCHLD: signal.signal(signal.SIGCHLD, child),
        }
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        return previous

    def _until_ready(self) -> int | None:
        """Wait until every worker is ready; an exit status when the start failed or was stopped."""
        while not all(s.ready for s in self.slots):
            self._wait(1.0)
            for slot in self._reap():
                code = slot.exit_code if slot.exit_code is not None else 1
                log.error("%s exited with status %s while starting", _name(slot), code)
                return code if code > 0 else 1
            if self.stop_signal is not None:
                return 0
        return None

    def _supervise(self) -> None:
        while self.stop_signal is None:
            now = time.monotonic()
            due = [s.restart_at for s in self.slots if s.restart_at is not None]
            self._wait(max(0.0, min(due) - now) if due else 5.0)
            for slot in self._reap():
                up = time.monotonic() - slot.started
                slot.failures = 1 if up >= _STABLE else slot.failures + 1
                delay = min(_MAX_DELAY, _FIRST_DELAY * 2 ** (slot.failures - 1))
                slot.restart_at = time.monotonic() + delay
                log.warning(
                    "%s (pid %d) exited unexpectedly (%s) after %.1f s; restarting it in %.1f s",
                    _name(slot),
                    slot.pid,
                    describe_exit(slot.exit_code),
                    up,
                    delay,
                )
            now = time.monotonic()
            for slot in self.slots:
                if self.stop_signal is None and slot.restart_at is not None and slot.restart_at <= now:
                    slot.restart_at = None
                    self._start(slot)

    def _wait(self, timeout: float) -> None:
        """Sleep until a signal, a ready byte, or ``timeout``; handle ready bytes."""
        fds = [self.wake_r] + [s.ready_fd for s in self.slots if s.ready_fd >= 0]
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        if self.wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.wake_r, 512):
                    pass
        for slot in self.slots:
            if slot.ready_fd >= 0 and slot.ready_fd in readable:
                data = b""
                with contextlib.suppress(OSError):
                    data = os.read(slot.ready_fd, 16)
                os.close(slot.ready_fd)
                slot.ready_fd = -1
                if data:
                    slot.ready = True
                    if slot.ever_ready:
                        log.info("%s (pid %d) is serving again", _name(slot), slot.pid)
                        self._rewrite_server_file()
                    slot.ever_ready = True

    def _reap(self) -> list[_Slot]:
        """Collect exited workers; the slots whose worker exited (``pid`` stays, for the log)."""
        exited = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for slot in self.slots:
                if slot.pid == pid and slot.exit_code is None:
                    slot.exit_code = os.waitstatus_to_exitcode(status)
                    slot.ready = False
                    if slot.ready_fd >= 0:
                        os.close(slot.ready_fd)
                        slot.ready_fd = -1
                    exited.append(slot)
        return exited

    # -- workers -------------------------------------------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        if threading.active_count() != 1:
            log.warning("forking with %d threads running", threading.active_count())
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        master = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            os.close(read_fd)
            self._child(slot.index, write_fd, master)
        os.close(write_fd)
        slot.pid, slot.ready_fd, slot.ready, slot.started, slot.exit_code = (
            pid,
            read_fd,
            False,
            time.monotonic(),
            None,
        )

    def _child(self, index: int, ready_fd: int, master: int) -> None:
        code = 1
        try:
            set_pdeathsig(signal.SIGKILL)
            if os.getppid() != master:
                os._exit(1)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the master only; it orders the shutdown
            for fd in (self.wake_r, self.wake_w, *(s.ready_fd for s in self.slots)):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            for i, sock in enumerate(self.sockets):
                if i != index:
                    sock.close()  # the agent keeps none
            for handler in list(logging.getLogger().handlers):
                logging.getLogger().removeHandler(handler)
            ctx = WorkerContext(
                index=index,
                count=len(self.sockets),
                sock=self.sockets[index] if index != AGENT else None,
                paths=self.paths,
                limits=self.limits,
                ready_fd=ready_fd,
                master_pid=master,
            )
            main = self.agent if index == AGENT else self.primary if index == 0 else self.replica
            main(self.settings, ctx)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _pids(self) -> dict[str, Any]:
        """Each worker's pid and the agent's (0 while down), as ``server.json`` lists them."""
        pids = {s.index: s.pid if s.exit_code is None else 0 for s in self.slots}
        return {"workers": [pids[i] for i in range(len(self.sockets))], "agent": pids[AGENT]}

    def _rewrite_server_file(self) -> None:
        if self.server_file is None:
            return
        with contextlib.suppress(OSError, ValueError):
            info = orjson.loads(self.server_file.read_bytes())
            info.update(self._pids())
            self.server_file.write_bytes(orjson.dumps(info))

    # -- shutdown ------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        for slot in self.slots:
            slot.restart_at = None
        replicas = [s for s in self.slots if s.index > 0]
        primary = [s for s in self.slots if s.index == 0]
        agent = [s for s in self.slots if s.index == AGENT]
        self._stop(replicas, _REPLICA_GRACE)
        self._stop(primary, _PRIMARY_GRACE)
        self._stop(agent, _PRIMARY_GRACE)  # it stops the model instances

    def _stop(self, slots: list[_Slot], grace: float) -> None:
        running = [s for s in slots if s.pid > 0 and s.exit_code is None]
        for slot in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(s.exit_code is None for s in running):
            left = deadline - time.monotonic()
            if left <= 0:
                for slot in running:
                    if slot.exit_code is None:
                        log.warning(
                            "%s (pid %d) did not stop in %.0f s: SIGKILL", _name(slot), slot.pid, grace
                        )
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(slot.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            self._wait(min(max(left, 0.05), 1.0))
            self._reap()


def _name(slot: _Slot) -> str:
    return "the agent process" if slot.index == AGENT else f"worker {slot.index}"


def supervise(
    settings: Settings, count: int, *, primary: WorkerMain, agent: AgentFactory | None = None
) -> int:
    """Run ``count`` workers (``primary`` as worker 0, replicas after it) and the agent process (its agent
    built by ``agent``, a plain ``LocalAgent`` by default) until SIGTERM/SIGINT; the exit status of
    ``superollama serve``."""
    from superollama.workers.agent_process import local_agent, serve_agent
    from superollama.workers.replica import serve_replica

    if not sys.platform.startswith("linux"):
        raise SystemExit("superollama: --workers above 1 needs Linux (SO_REUSEPORT, PR_SET_PDEATHSIG)")
    master_logging(settings)
    become_subreaper()  # model processes outlive a killed agent process: reaped here when they end
    settings.home.mkdir(parents=True, exist_ok=True)
    try:
        sockets = bind_reuseport(settings.host, settings.port, count)
    except OSError as exc:
        print(
            f"superollama: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr
        )
        return 1
    port = sockets[0].getsockname()[1]
    paths = RunPaths.create(settings.home, os.getpid())
    limits = None if settings.redis_url else SharedLimitTable()
    server_file = settings.home / SERVER_FILE
    agent_main = partial(serve_agent, agent=agent or local_agent)
    master = _Master(settings, sockets, paths, limits, primary, serve_replica, agent_main)
    try:
        return master.run(url_of(settings.host, port), server_file)
    finally:
        with contextlib.suppress(FileNotFoundError):
            server_file.unlink()
        for sock in sockets:
            sock.close()
        paths.remove()
