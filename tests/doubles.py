"""Test doubles of the gateway's seams, for tests that relay to a backend that is already running."""

from __future__ import annotations

from dataclasses import dataclass, field

from superollama.control import Route, RouteTarget

__all__ = ["Counts", "NoCounts", "NoStarter"]


class NoStarter:
    """An ``InstanceStarter`` for a backend that runs: nothing is ever started or replaced."""

    async def ensure_ready(self, route: Route) -> RouteTarget:
        raise AssertionError("the backend runs")

    async def replace(self, route: Route, failed: str, *, reached: bool) -> RouteTarget | None:
        return None


class NoCounts:
    """In-flight counts nobody reads."""

    def in_flight(self, instance_id: str) -> int:
        return 0

    def acquire(self, instance_id: str) -> None:
        pass

    def release(self, instance_id: str) -> None:
        pass

    def set_keep_alive(self, version: str, seconds: float | None) -> None:
        pass


@dataclass
class Counts:
    """Requests in flight per instance, as the agent counts them."""

    now: dict[str, int] = field(default_factory=dict)

    def in_flight(self, instance_id: str) -> int:
        return self.now.get(instance_id, 0)

    def acquire(self, instance_id: str) -> None:
        self.now[instance_id] = self.now.get(instance_id, 0) + 1

    def release(self, instance_id: str) -> None:
        self.now[instance_id] -= 1

    def set_keep_alive(self, version: str, seconds: float | None) -> None:
        pass

    def expires_in(self, version: str) -> float | None:
        return None

    async def unload(self, version: str, *, reason: str = "requested") -> bool:
        return False
