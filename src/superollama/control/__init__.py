"""Control plane: lifecycle use cases, the routing snapshot and (later) reconcilers and rollouts."""

from superollama.control.cluster import GATEWAY_HEADER, Cluster, gateway_id
from superollama.control.connections import ConnectionManager, ConnectionState
from superollama.control.controller import Controller, VersionDetails, parse_name
from superollama.control.credentials import CredentialStore
from superollama.control.deployments import DeploymentDetails, DeploymentManager, parse_targets
from superollama.control.feed import ChangeFeed
from superollama.control.jobs import JobManager
from superollama.control.leader import LeaderLock
from superollama.control.plane import ControlPlaneClient, KeyListeners, KeysListener, LocalControlPlane
from superollama.control.routing import Route, RouteTarget, RoutingHolder, RoutingTable
from superollama.control.secrets import SecretBox
from superollama.control.swap import Swapper

__all__ = [
    "GATEWAY_HEADER",
    "ChangeFeed",
    "Cluster",
    "ConnectionManager",
    "ConnectionState",
    "ControlPlaneClient",
    "Controller",
    "CredentialStore",
    "DeploymentDetails",
    "DeploymentManager",
    "JobManager",
    "KeyListeners",
    "KeysListener",
    "LeaderLock",
    "LocalControlPlane",
    "Route",
    "RouteTarget",
    "RoutingHolder",
    "RoutingTable",
    "SecretBox",
    "Swapper",
    "VersionDetails",
    "gateway_id",
    "parse_name",
    "parse_targets",
]
