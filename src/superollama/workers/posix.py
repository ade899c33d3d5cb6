"""What the master of ``serve --workers N`` needs from the OS: how many CPUs, ``SO_REUSEPORT`` sockets,
``PR_SET_PDEATHSIG``, and logging without a thread (it forks)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys

from superollama.settings import Settings

__all__ = [
    "become_subreaper",
    "bind_reuseport",
    "describe_exit",
    "master_logging",
    "resolve_workers",
    "set_pdeathsig",
    "url_of",
]

_BACKLOG = 1024
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def resolve_workers(settings: Settings) -> int:
    """``settings.workers``, or (0) the number of CPUs this process may run on."""
    if settings.workers:
        return settings.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def bind_reuseport(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening TCP sockets on one address with ``SO_REUSEPORT``; the first picks the port."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
            address = (address[0], sock.getsockname()[1], *address[2:])
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def url_of(host: str, port: int) -> str:
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"


def describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"status {code}"


def set_pdeathsig(sig: int) -> None:
    """SIGKILL this process when the master (the thread that forked it) exits."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            print(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)


def become_subreaper() -> None:
    """Orphans below this process (model processes whose agent process died) become its children, so its
    ``waitpid`` reaps them when they exit."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            print(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}", file=sys.stderr)


def master_logging(settings: Settings) -> None:
    """Plain stderr logging for the master (no writer thread: it forks)."""
    from superollama.telemetry.access_log import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else logging.Formatter(_PLAIN))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))
