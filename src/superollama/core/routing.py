"""The routing snapshot: what the data plane reads on every request, never the database.

    deployment ("chat", "chat@staging") → targets (a version or a connection's model, weight, role)
        → route of that target (its ready instances: endpoint, node) → an instance

A plain version is routable by its own name, as an implicit one-target deployment: its ``Route``. A
deployment is a weighted set of such routes. The control plane builds a new immutable ``RoutingTable`` on
every change and swaps one reference (``RoutingHolder.publish``); readers take ``holder.table`` once per
request and never see a half update.

Picking costs microseconds and allocates nothing per request: the deployment's cumulative weights are
computed when the snapshot is built; a sticky deployment hashes the request's ``user``, its session header
or its key id into ``[0, total)`` (the same value → the same target while the weights stay), a non-sticky
one draws a random number; then the instance with the fewest requests in flight of two drawn at random
(the "power of two choices": near-best balance without scanning every instance).

Target roles: ``primary`` targets share the traffic by weight. Later roles (``canary``: weight moved by
analysis; ``shadow``: mirrored, never answered) slot into the same tuple without a new shape.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, Literal

from superollama.core.names import ModelRef, NameError_
from superollama.core.placement import PlacementConstraint
from superollama.core.types import Endpoint

__all__ = [
    "PRODUCTION",
    "STICKY_MODES",
    "Deployment",
    "DeploymentTarget",
    "Route",
    "RouteTarget",
    "RoutingHolder",
    "RoutingTable",
    "Sticky",
    "pick_instance",
    "split_stage",
    "sticky_point",
]

Sticky = Literal["none", "user", "header", "key"]
STICKY_MODES: Final[tuple[str, ...]] = ("none", "user", "header", "key")
PRODUCTION: Final = "production"
SESSION_HEADER: Final = "X-Session-Id"


@dataclass(frozen=True)
class RouteTarget:
    """A ready instance that can take requests for a route (its in-flight count lives in the agent's
    accounting, which changes per request; the snapshot changes only when instances do)."""

    instance_id: str
    endpoint: Endpoint
    node: str = "local"


@dataclass(frozen=True)
class Route:
    """One servable thing: a version we run, or a model of a connection, with its ready instances.

    ``deployment`` is set on the copies a deployment holds (the name the client asked for, for scopes,
    limits and logs); ``name`` is always the version's (or connection model's) own name."""

    name: str
    version: str
    enabled: bool
    created: int
    targets: tuple[RouteTarget, ...] = ()
    capabilities: tuple[str, ...] = ("completion", "embedding")
    connection: str | None = None  # set for a model of an external backend
    unavailable: str | None = None  # why a connection's model has no target now
    fallbacks: tuple[str, ...] = ()  # deployments to try next when this one cannot answer
    deployment: str | None = None  # the deployment this copy was picked through


@dataclass(frozen=True)
class DeploymentTarget:
    """One target of a deployment: a version (or connection model) name and its share of the traffic."""

    name: str
    weight: int
    role: str = "primary"
    replicas: int = 1
    placement: PlacementConstraint = field(default_factory=PlacementConstraint)  # empty: anywhere


@dataclass(frozen=True)
class Deployment:
    """A deployment stage as clients name it: ``chat`` (production) or ``chat@staging``.

    ``choices`` are the targets' routes (copies with ``deployment`` set) that have weight, in order, and
    ``bounds`` their cumulative weights: both are filled by ``RoutingTable.build``."""

    name: str  # the name clients send: "chat" or "chat@staging"
    targets: tuple[DeploymentTarget, ...]
    sticky: str = "none"
    enabled: bool = True
    created: int = 0
    choices: tuple[Route, ...] = ()
    bounds: tuple[int, ...] = ()
    shadow: Route | None = None  # the target requests are mirrored to (never answered from)
    shadow_percent: int = 0  # the share of requests mirrored to it

    @property
    def total(self) -> int:
        return self.bounds[-1] if self.bounds else 0

    def weight_of(self, name: str) -> int:
        return sum(t.weight for t in self.targets if t.name == name)

    def pick(
        self,
        user: str | None = None,
        session: str | None = None,
        key: str | None = None,
        *,
        rand: Callable[[], float] = random.random,
    ) -> Route | None:
        """The route of the target this request goes to (None: no target has weight)."""
        choices = self.choices
        if len(choices) <= 1:
            return choices[0] if choices else None
        total = self.bounds[-1]
        sticky = self.sticky
        value = (
            user if sticky == "user" else session if sticky == "header" else key if sticky == "key" else None
        )
        point = sticky_point(value, total) if value else int(rand() * total)
        return choices[bisect.bisect_right(self.bounds, point)]


def sticky_point(value: str, total: int) -> int:
    """A stable point in ``[0, total)`` for ``value`` (the same in every process and after restarts)."""
    digest = hashlib.blake2b(value.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % total


def pick_instance(
    targets: tuple[RouteTarget, ...],
    in_flight: Callable[[str], int],
    *,
    randrange: Callable[[int], int] = random.randrange,
) -> RouteTarget:
    """Of two instances drawn at random, the one with fewer requests in flight (all of them when two)."""
    n = len(targets)
    if n == 1:
        return targets[0]
    if n == 2:
        a, b = targets
    else:
        i = randrange(n)
        j = randrange(n - 1)
        a, b = targets[i], targets[j + 1 if j >= i else j]
    return b if in_flight(b.instance_id) < in_flight(a.instance_id) else a


def split_stage(name: str) -> tuple[str, str]:
    """``chat@staging`` → (``chat``, ``staging``); ``chat`` → (``chat``, ``production``)."""
    base, at, stage = name.partition("@")
    return (base, stage) if at and stage else (base, PRODUCTION)


def _client_name(base: str, stage: str) -> str:
    return base if stage == PRODUCTION else f"{base}@{stage}"


@dataclass(frozen=True)
class RoutingTable:
    routes: Mapping[str, Route] = field(default_factory=lambda: MappingProxyType({}))
    generation: int = 0
    deployments: Mapping[str, Deployment] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(
        cls, routes: Iterable[Route], generation: int, deployments: Iterable[Deployment] = ()
    ) -> RoutingTable:
        """The snapshot; each deployment's choices are bound to the routes given (a target whose route
        is missing, or has no weight, gets no traffic)."""
        by_name = {r.name: r for r in routes}
        bound = {}
        for dep in deployments:
            choices: list[Route] = []
            bounds: list[int] = []
            total = 0
            shadow: Route | None = None
            shadow_percent = 0
            for t in dep.targets:
                route = by_name.get(t.name)
                if route is not None and t.role == "shadow" and t.weight > 0:
                    shadow, shadow_percent = route, min(t.weight, 100)
                if route is None or t.weight <= 0 or t.role != "primary":
                    continue
                total += t.weight
                choices.append(_as_deployed(route, dep.name))
                bounds.append(total)
            bound[dep.name] = Deployment(
                dep.name,
                dep.targets,
                dep.sticky,
                dep.enabled,
                dep.created,
                tuple(choices),
                tuple(bounds),
                shadow,
                shadow_percent,
            )
        return cls(MappingProxyType(by_name), generation, MappingProxyType(bound))

    def lookup(self, name: str) -> Route | None:
        """Find a version's (or connection model's) route by the name a client sent (case-insensitive,
        ``latest`` when untagged)."""
        route = self.routes.get(name)
        if route is not None:
            return route
        try:
            canonical = str(ModelRef.parse(name))
        except NameError_:
            return None
        return self.routes.get(canonical)

    def deployment(self, name: str) -> Deployment | None:
        """The deployment stage a client's name addresses (``chat@production`` is ``chat``)."""
        dep = self.deployments.get(name)
        if dep is None and "@" in name:
            base, stage = split_stage(name)
            dep = self.deployments.get(_client_name(base, stage))
        return dep

    def enabled(self) -> list[Route]:
        return [r for r in self.routes.values() if r.enabled]

    def enabled_deployments(self) -> list[Deployment]:
        return [d for d in self.deployments.values() if d.enabled]


def _as_deployed(route: Route, deployment: str) -> Route:
    return replace(route, deployment=deployment)


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
