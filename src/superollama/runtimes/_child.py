"""What every worker child does first: tie its life to its parent (or to a guardian), and keep stdout as
the handshake pipe.

Two lifetimes (``settle_lifetime``): by default a worker dies with its parent, the agent
(``PR_SET_PDEATHSIG``); with ``--guardian-pid`` (the agent process of ``serve --workers N``) it outlives
its parent — a restarted agent re-adopts it — and dies with the guardian, the server's master, instead
(a thread waits on a pidfd of it), so a SIGKILL of the master still leaves nothing behind.

Kept free of heavy imports (workers import it before torch or vLLM).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
from typing import IO

__all__ = ["die_with_parent", "set_pdeathsig", "settle_lifetime", "take_control_pipe"]

_PR_SET_PDEATHSIG = 1


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when the thread that forked it exits (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            print(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)


def die_with_parent(parent_pid: int | None, sig: int = signal.SIGKILL) -> bool:
    """Get ``sig`` when the parent dies; False if it already has (the getppid race)."""
    set_pdeathsig(sig)
    return parent_pid is None or os.getppid() == parent_pid


def settle_lifetime(parent_pid: int | None, guardian_pid: int | None) -> bool:
    """Die with the parent, or (``guardian_pid``) with the guardian only; False if the one this process
    must die with is already gone."""
    if guardian_pid is None:
        return die_with_parent(parent_pid)
    try:
        pidfd = os.pidfd_open(guardian_pid)
    except ProcessLookupError:
        return False

    def watch() -> None:
        select.select([pidfd], [], [])  # readable once the guardian has exited
        os.kill(os.getpid(), signal.SIGKILL)  # as PR_SET_PDEATHSIG would

    # The watcher never takes a stop signal: a process-directed SIGTERM may go to any thread that does not
    # block it, and in a worker that waits for it with sigwait (llamacpp_worker) this thread would take it
    # with the default action, ending the process by the signal instead of the worker's clean stop.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        threading.Thread(target=watch, name="guardian", daemon=True).start()  # inherits the mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    return True


def take_control_pipe() -> IO[str]:
    """Keep the original stdout for the handshake; route fd 1 (Python and C alike) to stderr."""
    control = os.fdopen(os.dup(1), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    return control
