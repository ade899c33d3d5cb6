"""Control plane: lifecycle use cases, the routing snapshot and (later) reconcilers and rollouts."""

from superollama.control.controller import Controller, VersionDetails, parse_name
from superollama.control.routing import Route, RouteTarget, RoutingHolder, RoutingTable

__all__ = [
    "Controller",
    "Route",
    "RouteTarget",
    "RoutingHolder",
    "RoutingTable",
    "VersionDetails",
    "parse_name",
]
