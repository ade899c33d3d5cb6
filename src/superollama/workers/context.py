"""What one worker process gets from its master: its index, its listening socket, the run directory, the
shared rate-limit table, and a pipe to say "ready" on."""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass

from aiohttp import web

from superollama.gateway.listener import ConnectionGate, ConnectionLimits, GatedSockSite
from superollama.gateway.middleware import AnswerHeaders
from superollama.security.shared_limits import SharedLimitTable, SharedMemoryRateLimiter
from superollama.workers.paths import RunPaths

__all__ = ["FORWARDED_CLIENT", "WORKER_HEADER", "WorkerContext"]

WORKER_HEADER = "X-Superollama-Worker"  # on every answer: the index of the worker that took the connection
FORWARDED_CLIENT = "X-Superollama-Client"  # replica → primary: the client's address (trusted on the socket)


@dataclass
class WorkerContext:
    index: int  # 0: the primary; -1: the agent process
    count: int
    sock: socket.socket | None  # bound with SO_REUSEPORT and listening, made by the master (None: the agent)
    paths: RunPaths
    limits: SharedLimitTable | None  # None when the rate limits live in Redis
    ready_fd: int
    master_pid: int

    @property
    def primary(self) -> bool:
        return self.index == 0

    def shared_limiter(self) -> SharedMemoryRateLimiter:
        if self.limits is None:
            raise RuntimeError("no shared rate-limit table: the limits live in Redis")
        return SharedMemoryRateLimiter(self.limits)

    def add_worker_header(self, app: web.Application) -> None:
        AnswerHeaders.of(app).fixed[WORKER_HEADER] = str(self.index)

    async def start_sites(self, runner: web.AppRunner, limits: ConnectionLimits) -> None:
        """Serve the shared port with this worker's connection bounds (and, on the primary,
        ``primary.sock`` for the replicas' proxies, ungated: those are our own connections), then tell
        the master this worker is ready."""
        assert self.sock is not None, "the agent process serves no port"
        await GatedSockSite(runner, ConnectionGate(runner, limits), self.sock).start()
        if self.primary:
            with contextlib.suppress(FileNotFoundError):
                self.paths.primary.unlink()
            await web.UnixSite(runner, str(self.paths.primary)).start()
            os.chmod(self.paths.primary, 0o600)
        self.notify_ready()

    def notify_ready(self) -> None:
        if self.ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, b"r")
                os.close(self.ready_fd)
            self.ready_fd = -1
