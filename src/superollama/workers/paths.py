"""Where the worker processes of one server find each other: Unix sockets in a private run directory.

``HOME/run/<master pid>/`` (mode 0700) holds ``primary.sock`` (the primary's full app: replicas proxy the
admin API, model management, ``/metrics``, the UI and unknown paths to it, byte for byte),
``control.sock`` (the primary's internal API: the watch channel, scale from zero, unload) and
``agent.sock`` (the node agent process's API, ``agent_process``). Every socket is mode 0600. A directory
is per master, so two servers on one home never share sockets; directories left by a master that no
longer runs are removed at the next start. A home whose path is too long for a socket address (108
bytes) gets its run directory under the system's temporary directory instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["RunPaths"]

_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes with its NUL; keep a margin


@dataclass(frozen=True)
class RunPaths:
    dir: Path

    @property
    def primary(self) -> Path:
        return self.dir / "primary.sock"

    @property
    def control(self) -> Path:
        return self.dir / "control.sock"

    @property
    def agent(self) -> Path:
        return self.dir / "agent.sock"

    @classmethod
    def create(cls, home: Path, master_pid: int) -> RunPaths:
        """Make this master's run directory (0700), after removing the ones of masters that are gone."""
        root = home / "run"
        if len(str(root / str(master_pid) / "control.sock")) > _MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
            root = Path(tempfile.gettempdir()) / f"superollama-{os.getuid()}-{digest}"
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for old in root.iterdir():
            if old.name.isdigit() and int(old.name) != master_pid and not psutil.pid_exists(int(old.name)):
                shutil.rmtree(old, ignore_errors=True)
        run = root / str(master_pid)
        run.mkdir(mode=0o700, exist_ok=True)
        os.chmod(run, 0o700)
        return cls(run)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)
