"""The routing snapshot on the wire between the primary and its replicas: ``RoutingTable`` ⇄ JSON.

Generic over the dataclasses' fields (a field added to ``Route`` or ``Endpoint`` travels without a change
here); JSON arrays come back as the tuples the frozen dataclasses hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from superollama.core import Endpoint
from superollama.core.placement import PlacementConstraint
from superollama.core.routing import Deployment, DeploymentTarget, Route, RouteTarget, RoutingTable

__all__ = ["decode_table", "decode_target", "table_json"]


def table_json(table: RoutingTable) -> dict[str, Any]:
    """The table as ``orjson.dumps`` takes it (it writes the dataclasses itself)."""
    deployments = [
        {"name": d.name, "targets": d.targets, "sticky": d.sticky, "enabled": d.enabled, "created": d.created}
        for d in table.deployments.values()
    ]
    return {"generation": table.generation, "routes": list(table.routes.values()), "deployments": deployments}


def decode_table(data: Mapping[str, Any]) -> RoutingTable:
    routes = [_route(r) for r in data["routes"]]
    return RoutingTable.build(
        routes, int(data["generation"]), map(_deployment, data.get("deployments") or ())
    )


def _deployment(data: Mapping[str, Any]) -> Deployment:
    values = _known(Deployment, data)
    values["targets"] = tuple(_target(t) for t in data.get("targets") or ())
    values.pop("choices", None)
    values.pop("bounds", None)
    return Deployment(**values)


def _target(data: Mapping[str, Any]) -> DeploymentTarget:
    values = _known(DeploymentTarget, data)
    values["placement"] = PlacementConstraint(**_known(PlacementConstraint, data.get("placement") or {}))
    return DeploymentTarget(**values)


def decode_target(data: Mapping[str, Any]) -> RouteTarget:
    return RouteTarget(str(data["instance_id"]), Endpoint(**_known(Endpoint, data["endpoint"])))


def _route(data: Mapping[str, Any]) -> Route:
    values = _known(Route, data)
    values["targets"] = tuple(decode_target(t) for t in data.get("targets") or ())
    return Route(**values)


def _known(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: _tuples(v) for k, v in data.items() if k in names}


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
