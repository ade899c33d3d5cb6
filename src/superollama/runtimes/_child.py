"""What every worker child does first: die with its parent, and keep stdout as the handshake pipe.

Kept free of heavy imports (workers import it before torch or vLLM).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import IO

__all__ = ["die_with_parent", "set_pdeathsig", "take_control_pipe"]

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


def take_control_pipe() -> IO[str]:
    """Keep the original stdout for the handshake; route fd 1 (Python and C alike) to stderr."""
    control = os.fdopen(os.dup(1), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    return control
