"""The routing snapshot lives in ``core.routing`` (the data plane reads it without importing the control
plane); these names stay importable from here for the control plane's own modules."""

from __future__ import annotations

from superollama.core.routing import Route, RouteTarget, RoutingHolder, RoutingTable

__all__ = ["Route", "RouteTarget", "RoutingHolder", "RoutingTable"]
