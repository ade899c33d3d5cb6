"""Real failures for tests: a small filesystem that fills up (tmpfs, mounted by the test) and upstreams that
accept a connection and then never answer.

``Tmpfs.mount`` needs root (or CAP_SYS_ADMIN); where the kernel refuses with EPERM the test is skipped with
that reason, and only then. Every mount is unmounted at teardown.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import threading
from pathlib import Path

import pytest


class Tmpfs:
    """tmpfs mounts made by one test, unmounted when it ends."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []

    def mount(self, path: Path, size_mb: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            text = done.stderr.lower()
            if "permission denied" in text or "not permitted" in text or "must be superuser" in text:
                pytest.skip(
                    f"cannot mount a tmpfs here ({errno.errorcode[errno.EPERM]}): {done.stderr.strip()}"
                )
            raise RuntimeError(f"mount tmpfs on {path} failed: {done.stderr.strip()}")
        self.mounted.append(path)
        return path

    def unmount_all(self) -> None:
        for path in reversed(self.mounted):
            done = subprocess.run(["umount", str(path)], capture_output=True, check=False)
            if done.returncode != 0:  # still busy (a child process that outlived the test): detach it
                subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        self.mounted.clear()


class SilentServer:
    """A TCP server on 127.0.0.1 (free port) that accepts connections and never sends a byte.

    ``after`` is what it sends once it has read a request's head (``b""``: nothing at all), e.g. the
    status line and headers of an answer whose body then never comes; with ``hang_up`` it then closes the
    connection (an answer cut short).
    """

    def __init__(self, after: bytes = b"", *, hang_up: bool = False) -> None:
        self.after = after
        self.hang_up = hang_up
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SilentServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            if self.after:
                threading.Thread(target=self._answer_head, args=(conn,), daemon=True).start()

    def _answer_head(self, conn: socket.socket) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    return
                data += piece
            conn.sendall(self.after)
            if self.hang_up:
                conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        for conn in self._conns:
            conn.close()
