"""Two hosts on one machine: network namespaces with addresses of their own, joined by a veth pair.

Each ``Host`` is a namespace (``ip netns add``) with its loopback up and one end of the pair, addressed on
a private /24 nobody else uses (``10.213.N.0/24``). A process runs "on" a host through ``ip netns exec``:
the filesystem, the Python and its ``PYTHONPATH`` are the machine's, only the network is the host's. The
test process itself stays in the machine's namespace; ``Host.call`` runs a function in a thread that
entered the host's namespace (``setns`` moves one thread only), so a test talks HTTP to a server bound
to that host's address without a process per request.

``cut`` / ``restore`` take a host's end of the link down and up again: a cable pulled, then plugged back
(the other end loses its carrier and drops what it sends; this end has no route to the other).

``TwoHosts.remove`` kills every process in each namespace by PID (``ip netns pids``: whatever a test left
there, Ray's daemons and model processes included, and nothing outside) and deletes the namespaces,
which removes the veth pair with them. Root only; ``unavailable`` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Host", "TwoHosts", "unavailable"]

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000


def unavailable() -> str | None:
    """Why two namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _enter(namespace: str) -> None:
    """This thread moves into ``namespace``'s network (the other threads stay where they are)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Host:
    namespace: str
    ip: str
    device: str  # its end of the veth pair
    _thread: ThreadPoolExecutor | None = field(default=None, repr=False)

    def argv(self, *command: str) -> list[str]:
        """``command`` run on this host."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with this host's network (one thread, kept for the host's life)."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(
                1, thread_name_prefix=self.namespace, initializer=_enter, initargs=(self.namespace,)
            )
        return self._thread.submit(fn, *args, **kwargs).result()

    def pids(self) -> set[int]:
        """Every process running in this host's namespace."""
        done = subprocess.run(
            ["ip", "netns", "pids", self.namespace], capture_output=True, text=True, timeout=30, check=False
        )
        return {int(p) for p in done.stdout.split()}

    def cut(self) -> None:
        _ip("-n", self.namespace, "link", "set", self.device, "down")

    def restore(self) -> None:
        _ip("-n", self.namespace, "link", "set", self.device, "up")

    def kill_all(self, timeout: float = 30.0) -> None:
        """SIGKILL every process in the namespace, until none is left (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)  # a poll interval: the kernel reaps them

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread = None


class TwoHosts:
    """``a`` and ``b``, ``10.213.N.1`` and ``10.213.N.2``; names and subnet from ``tag`` (e.g. the pid)."""

    def __init__(self, tag: int) -> None:
        subnet = f"10.213.{tag % 254 + 1}"
        self.a = Host(f"so{tag}a", f"{subnet}.1", f"so{tag}va")
        self.b = Host(f"so{tag}b", f"{subnet}.2", f"so{tag}vb")

    @property
    def hosts(self) -> Sequence[Host]:
        return (self.a, self.b)

    def make(self) -> TwoHosts:
        for host in self.hosts:
            _ip("netns", "add", host.namespace)
            _ip("-n", host.namespace, "link", "set", "lo", "up")
        _ip(
            "link", "add", self.a.device, "netns", self.a.namespace,
            "type", "veth", "peer", "name", self.b.device, "netns", self.b.namespace,
        )  # fmt: skip
        for host in self.hosts:
            _ip("-n", host.namespace, "addr", "add", f"{host.ip}/24", "dev", host.device)
            _ip("-n", host.namespace, "link", "set", host.device, "up")
        return self

    def remove(self) -> None:
        """Every process in the namespaces killed, then the namespaces (and the pair) deleted."""
        for host in self.hosts:
            host.close()
            if os.path.exists(f"/run/netns/{host.namespace}"):
                host.kill_all()
                with contextlib.suppress(RuntimeError):
                    _ip("netns", "del", host.namespace)
