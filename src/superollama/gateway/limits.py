"""Per-route concurrency limits with a bounded queue: explicit back-pressure instead of a pile-up.

A route (what a client names) takes at most ``concurrency`` requests at once; up to ``queue`` more wait,
first come first served, each at most ``queue_timeout`` seconds; past that, or when the queue is full, the
request is refused with 503 ``server_busy`` and a ``Retry-After`` (Ollama's own "server busy, maximum
pending requests exceeded"). A released slot goes straight to the first waiter, so a request that arrives
later cannot overtake the queue. ``concurrency`` 0 turns the limit off; ``overrides`` gives some routes
their own limit. Only routes with requests in flight have a gate: the map stays small.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager

from superollama.errors import ServerBusy

__all__ = ["RouteLimits"]


class _Gate:
    __slots__ = ("active", "waiters")

    def __init__(self) -> None:
        self.active = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()


class RouteLimits:
    """Concurrency gates by route name (see the module's docstring)."""

    def __init__(
        self,
        concurrency: int = 0,
        queue: int = 0,
        queue_timeout: float = 30.0,
        overrides: Mapping[str, int] | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.queue = queue
        self.queue_timeout = queue_timeout
        self._overrides = dict(overrides or {})
        self._gates: dict[str, _Gate] = {}
        self.refused = 0

    def limit(self, route: str) -> int:
        return self._overrides.get(route, self.concurrency)

    def state(self, route: str) -> tuple[int, int]:
        """(requests in flight, requests queued) on ``route``."""
        gate = self._gates.get(route)
        return (gate.active, len(gate.waiters)) if gate is not None else (0, 0)

    def states(self) -> dict[str, tuple[int, int]]:
        """Every route with requests in flight under a limit: (in flight, queued)."""
        return {name: (g.active, len(g.waiters)) for name, g in self._gates.items()}

    def slot(self, route: str) -> AbstractAsyncContextManager[None] | None:
        """A context that holds one of ``route``'s slots for its block, queueing (bounded) for it when all
        are taken; None for a route without a limit: nothing to enter (not even a no-op context, which
        would cost the request path two coroutines a request)."""
        limit = self.limit(route)
        return None if limit <= 0 else self._held(route, limit)

    @contextlib.asynccontextmanager
    async def _held(self, route: str, limit: int) -> AsyncIterator[None]:
        gate = self._gates.get(route)
        if gate is None:
            gate = self._gates[route] = _Gate()
        if gate.active < limit and not gate.waiters:
            gate.active += 1
        else:
            await self._wait(route, gate, limit)
        try:
            yield
        finally:
            self._release(route, gate)

    async def _wait(self, route: str, gate: _Gate, limit: int) -> None:
        if len(gate.waiters) >= self.queue:
            self.refused += 1
            raise ServerBusy(
                f"server busy: {route!r} has {gate.active} requests in flight (its limit) and "
                f"{len(gate.waiters)} waiting (the queue's limit)",
                retry_after=1,
            )
        waiter = asyncio.get_running_loop().create_future()
        gate.waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.queue_timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():  # the slot was handed over as we gave up
                self._release(route, gate)
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    gate.waiters.remove(waiter)
                self._drop_if_idle(route, gate)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.refused += 1
            raise ServerBusy(
                f"server busy: {route!r} had no free slot within {self.queue_timeout:g}s "
                f"({limit} requests at once)",
                retry_after=max(1.0, self.queue_timeout),
            ) from None

    def _release(self, route: str, gate: _Gate) -> None:
        while gate.waiters:
            waiter = gate.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to it: ``active`` stays
                return
        gate.active -= 1
        self._drop_if_idle(route, gate)

    def _drop_if_idle(self, route: str, gate: _Gate) -> None:
        if gate.active <= 0 and not gate.waiters and self._gates.get(route) is gate:
            del self._gates[route]
