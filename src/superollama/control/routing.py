"""The routing snapshot: what the data plane reads on every request, never the database.

The control plane builds a new immutable ``RoutingTable`` on every change and swaps one reference
(``RoutingHolder.publish``); readers take ``holder.table`` once per request and never see a half update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from superollama.core import Endpoint, ModelRef, NameError_

__all__ = ["Route", "RouteTarget", "RoutingHolder", "RoutingTable"]


@dataclass(frozen=True)
class RouteTarget:
    """A ready instance that can take requests for a route."""

    instance_id: str
    endpoint: Endpoint


@dataclass(frozen=True)
class Route:
    """A deployment as clients name it. For now one deployment per version, named by the version."""

    name: str
    version: str
    enabled: bool
    created: int
    targets: tuple[RouteTarget, ...] = ()
    capabilities: tuple[str, ...] = ("completion", "embedding")
    connection: str | None = None  # set for a model of an external backend
    unavailable: str | None = None  # why a connection's model has no target now


@dataclass(frozen=True)
class RoutingTable:
    routes: Mapping[str, Route] = field(default_factory=lambda: MappingProxyType({}))
    generation: int = 0

    @classmethod
    def build(cls, routes: Iterable[Route], generation: int) -> RoutingTable:
        return cls(MappingProxyType({r.name: r for r in routes}), generation)

    def lookup(self, name: str) -> Route | None:
        """Find a route by the name a client sent (case-insensitive, ``latest`` when untagged)."""
        route = self.routes.get(name)
        if route is not None:
            return route
        try:
            canonical = str(ModelRef.parse(name))
        except NameError_:
            return None
        return self.routes.get(canonical)

    def enabled(self) -> list[Route]:
        return [r for r in self.routes.values() if r.enabled]


class RoutingHolder:
    """Holds the current snapshot; ``publish`` is the only writer (one reference swap), then tells the
    subscribers (the primary worker pushes each snapshot to its replicas)."""

    def __init__(self) -> None:
        self._table = RoutingTable()
        self._listeners: list[Callable[[RoutingTable], None]] = []

    @property
    def table(self) -> RoutingTable:
        return self._table

    def publish(self, table: RoutingTable) -> None:
        self._table = table
        for listener in self._listeners:
            listener(table)

    def subscribe(self, listener: Callable[[RoutingTable], None]) -> None:
        """Call ``listener`` with every snapshot published from now on (synchronously, in ``publish``)."""
        self._listeners.append(listener)
