"""What the data plane needs from whoever runs the instances, as two small protocols.

In the primary process (and in a single-process server) the controller starts instances and the local
agent counts their requests; in a replica worker (``serve --workers N``) one link to the primary does
both: it asks the primary to start an instance and reports its own in-flight counts to it.
"""

from __future__ import annotations

from typing import Protocol

from superollama.core.routing import Route, RouteTarget

__all__ = ["InstanceAccounting", "InstanceStarter"]


class InstanceStarter(Protocol):
    """Scale from zero: a ready target for a route with none, waited for (bounded); 503 when it is not."""

    async def ensure_ready(self, route: Route) -> RouteTarget: ...

    async def replace(self, route: Route, failed: str, *, reached: bool) -> RouteTarget | None:
        """A target in place of instance ``failed`` (which gave no answer) when sending the request again
        is safe: ``reached`` says whether the request may have reached it. None: the request fails."""
        ...


class InstanceAccounting(Protocol):
    """Per-instance request accounting (hot path: no I/O) and keep-alive control."""

    def in_flight(self, instance_id: str) -> int: ...

    def acquire(self, instance_id: str) -> None: ...

    def release(self, instance_id: str) -> None: ...

    def set_keep_alive(self, version: str, seconds: float | None) -> None: ...

    def expires_in(self, version: str) -> float | None: ...

    async def unload(self, version: str, *, reason: str = "requested") -> bool: ...
