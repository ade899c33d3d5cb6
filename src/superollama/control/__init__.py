"""Control plane: lifecycle use cases, the routing snapshot and (later) reconcilers and rollouts."""

from superollama.control.connections import ConnectionManager, ConnectionState
from superollama.control.controller import Controller, VersionDetails, parse_name
from superollama.control.credentials import CredentialStore
from superollama.control.jobs import JobManager
from superollama.control.routing import Route, RouteTarget, RoutingHolder, RoutingTable
from superollama.control.secrets import SecretBox

__all__ = [
    "ConnectionManager",
    "ConnectionState",
    "Controller",
    "CredentialStore",
    "JobManager",
    "Route",
    "RouteTarget",
    "RoutingHolder",
    "RoutingTable",
    "SecretBox",
    "VersionDetails",
    "parse_name",
]
