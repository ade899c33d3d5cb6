"""Child process of one vLLM instance: starts vLLM's OpenAI server, waits for it, stops it with its children.

    python -m superollama.runtimes.vllm_supervisor --instance-id ID [--host H] [--ready-timeout S] \
        [--stop-timeout S] [--parent-pid PID] -- VLLM_PYTHON -m vllm.entrypoints.openai.api_server ARGS…

vLLM is a program of its own (often in another virtual environment), so it cannot print our handshake.
This small supervisor, started by ``spawn_worker`` like any worker, does that for it:

- picks a free port (binds port 0, then hands the number to vLLM with ``--host``/``--port``);
- starts vLLM in its own process group, with stdout and stderr on the instance's log, and with
  ``PR_SET_PDEATHSIG`` SIGKILL; vLLM's engine runs in further processes that the death signal does not
  reach, so a forked watchdog SIGKILLs vLLM's whole group if the supervisor dies without stopping it
  (a SIGKILL from a cancelled start, the OOM killer);
- polls vLLM's ``GET /health`` until 200, then prints the ready line (or the failed line with the reason:
  vLLM exited, or the ready timeout passed);
- on SIGTERM (also what it receives when the agent dies: its own death signal), sends SIGTERM to vLLM's
  whole process group, SIGKILL after ``--stop-timeout`` seconds, and exits 0; if vLLM exits by itself,
  it kills what is left of the group and exits non-zero, which the agent sees as a crash.

Standard library only: no torch or vLLM import here.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import FrameType
from typing import IO

from superollama.runtimes._child import die_with_parent, set_pdeathsig, take_control_pipe
from superollama.runtimes._ready import format_failed, format_ready

__all__ = ["main"]

_POLL = 0.25


class _Stop:
    """Set by SIGTERM/SIGINT (a plain flag: the supervisor is single-threaded), or by the guardian's exit
    (its pidfd turns readable: polled by the supervisor's loops, no thread)."""

    def __init__(self) -> None:
        self._signalled = False
        self._guardian: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    def guard(self, guardian_pid: int) -> bool:
        """Stop when ``guardian_pid`` exits; False if it already has."""
        try:
            self._guardian = os.pidfd_open(guardian_pid)
        except ProcessLookupError:
            return False
        return True

    @property
    def requested(self) -> bool:
        if not self._signalled and self._guardian is not None:
            self._signalled = bool(select.select([self._guardian], [], [], 0)[0])
        return self._signalled


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: vllm_supervisor [options] -- COMMAND…")
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m superollama.runtimes.vllm_supervisor")
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--stop-timeout", type=float, default=10.0)
    parser.add_argument("--parent-pid", type=int, default=None)
    # the server's master with ``serve --workers N``: this supervisor (and its vLLM) outlives the agent
    # process that started it, is taken back by the next one, and dies with the master instead
    parser.add_argument("--guardian-pid", type=int, default=None)
    command = argv[cut + 1 :]
    if not command:
        raise SystemExit("vllm_supervisor: no command after --")
    return parser.parse_args(argv[:cut]), command


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stop_group(child: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM vLLM's process group, SIGKILL it after ``grace`` s, reap the server."""
    _signal_group(child.pid, signal.SIGTERM)
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        print(f"vLLM pid {child.pid} did not exit {grace:g} s after SIGTERM: SIGKILL", file=sys.stderr)
    _signal_group(child.pid, signal.SIGKILL)  # whatever is left: engine-core processes and the server
    child.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start_watchdog() -> tuple[int, int]:
    """Fork, before vLLM starts, a process that SIGKILLs vLLM's process group once this process is gone;
    its pid and the pipe that vLLM's process writes its group into (``enter_watch``).

    Forked first, so no moment exists in which vLLM runs and nothing watches it (a supervisor SIGKILLed
    just after starting vLLM left vLLM's engine running). It polls its parent pid (no signal races): when
    the supervisor dies, however, the watchdog is re-parented and kills the group it was told. A
    supervisor that stops vLLM itself kills the watchdog first."""
    supervisor = os.getpid()
    told, tell = os.pipe()
    pid = os.fork()
    if pid:
        os.close(told)
        return pid, tell
    try:  # the watchdog: runs no Python cleanup of the supervisor's, only this loop
        # not the handshake pipe: the agent must see EOF when the supervisor dies
        os.closerange(3, told)
        os.closerange(told + 1, 65536)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while os.getppid() == supervisor:
            time.sleep(_POLL)
        # vLLM wrote its group before it could start anything (or it never ran: nothing to read)
        if select.select([told], [], [], 0)[0] and (group := os.read(told, 32).strip()):
            _signal_group(int(group), signal.SIGKILL)
    finally:
        os._exit(0)


def enter_watch(tell: int, supervisor: int) -> None:
    """Run in vLLM's process between fork and exec (its own session by then): die with the supervisor, and
    tell the watchdog its process group, before vLLM can start a process of its own."""
    set_pdeathsig()
    os.write(tell, b"%d\n" % os.getpgid(0))
    if os.getppid() != supervisor:  # the supervisor died before the death signal was set
        os._exit(1)


def end_watchdog(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _wait_ready(child: subprocess.Popen[bytes], url: str, timeout: float, stop: _Stop) -> str | None:
    """None once vLLM is healthy, else why not."""
    deadline = time.monotonic() + timeout
    while not stop.requested:
        code = child.poll()
        if code is not None:
            return f"vLLM exited with code {code} before it was ready"
        if healthy(url):
            return None
        if time.monotonic() > deadline:
            return f"vLLM did not become ready in {timeout:g} s"
        time.sleep(_POLL)
    return "stopped while vLLM was loading"


def main(argv: list[str] | None = None) -> int:
    args, command = parse_args(argv)
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # With a guardian: outlive the agent, stop when the guardian exits. Without: SIGTERM (not SIGKILL) when
    # the agent dies. Either way we still stop vLLM's whole group on our way out.
    alive = (
        stop.guard(args.guardian_pid)
        if args.guardian_pid is not None
        else die_with_parent(args.parent_pid, signal.SIGTERM)
    )
    if not alive:
        print("parent (or guardian) is gone before start: exiting", file=sys.stderr)
        return 3
    control = take_control_pipe()
    port = free_port(args.host)
    argv = [*command, "--host", args.host, "--port", str(port)]
    print(f"instance {args.instance_id}: starting {' '.join(argv)}", file=sys.stderr, flush=True)
    watchdog, tell = start_watchdog()
    try:
        try:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),
                stderr=sys.stderr.fileno(),
                start_new_session=True,
                # single-threaded here; vLLM dies if we are SIGKILLed, its engine by the watchdog
                preexec_fn=functools.partial(enter_watch, tell, os.getpid()),  # noqa: PLW1509
            )
        except (OSError, subprocess.SubprocessError) as exc:
            control.write(format_failed(f"cannot start {command[0]}: {exc}"))
            control.close()
            return 1
        finally:
            os.close(tell)
        return _supervise(child, args, f"http://{args.host}:{port}", control, stop)
    finally:
        end_watchdog(watchdog)


def _supervise(
    child: subprocess.Popen[bytes], args: argparse.Namespace, address: str, control: IO[str], stop: _Stop
) -> int:
    """Wait for vLLM to be healthy, say so, then until a stop request or vLLM's own exit."""
    reason = _wait_ready(child, f"{address}/health", args.ready_timeout, stop)
    if reason is not None:
        stop_group(child, 0.0 if child.poll() is not None else min(args.stop_timeout, 5.0))
        control.write(format_failed(reason))
        control.close()
        return 1
    print(f"instance {args.instance_id}: vLLM ready at {address}", file=sys.stderr, flush=True)
    control.write(format_ready(address, os.getpid()))
    control.close()
    while not stop.requested and child.poll() is None:
        time.sleep(_POLL)
    if stop.requested:
        print(f"instance {args.instance_id}: stopping vLLM", file=sys.stderr, flush=True)
        stop_group(child, args.stop_timeout)
        return 0
    code = child.returncode
    print(f"instance {args.instance_id}: vLLM exited by itself with code {code}", file=sys.stderr, flush=True)
    stop_group(child, 0.0)
    return code if code else 1


if __name__ == "__main__":
    sys.exit(main())
