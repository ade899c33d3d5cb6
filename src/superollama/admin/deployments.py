"""Admin API for deployments (``/admin/v1/deployments``): the CLI's ``deploy``, ``split``, ``promote``,
``rollback``, ``pause``, ``resume`` and ``deployments ls|show|rm`` are clients of these routes.

A name in a path is what clients send in ``model``: ``chat`` (production) or ``chat@staging``. Targets in a
body are ``[{"name": "smollm2:135m", "weight": 90, "placement": {…}}, …]`` or the CLI's
``["smollm2:135m=90", …]``; a body's ``placement`` (``{device, node, labels, spread}``,
``control/placement.py``) applies to the targets that do not carry their own.

``POST /admin/v1/models/{name}/scale`` (``{"replicas", "placement"}``) scales a version clients name
directly: ``superollama scale VERSION --replicas N [--device …]``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from superollama.admin.routes import PREFIX, actor_of
from superollama.control import DeploymentManager, parse_targets
from superollama.control.fleet import Fleet
from superollama.control.placement import parse_placement
from superollama.control.rollouts import RolloutManager
from superollama.core.placement import PlacementConstraint
from superollama.core.routing import DeploymentTarget
from superollama.errors import InvalidRequest
from superollama.gateway import read_json
from superollama.gateway.responses import json_response as _json

__all__ = ["DeploymentRoutes", "FleetRoutes", "targets_of"]


class DeploymentRoutes:
    def __init__(self, deployments: DeploymentManager, rollouts: RolloutManager | None = None) -> None:
        self._deployments = deployments
        self._rollouts = rollouts

    def register(self, app: web.Application) -> None:
        r = app.router
        base = f"{PREFIX}/deployments"
        r.add_get(base, self.list)
        r.add_get(base + "/{name}", self.show)
        r.add_put(base + "/{name}", self.deploy)
        r.add_delete(base + "/{name}", self.remove)
        r.add_post(base + "/{name}/split", self.split)
        r.add_post(base + "/{name}/promote", self.promote)
        r.add_post(base + "/{name}/scale", self.scale)
        r.add_post(base + "/{name}/rollback", self.rollback)
        r.add_post(base + "/{name}/pause", self.pause)
        r.add_post(base + "/{name}/resume", self.resume)
        r.add_post(PREFIX + "/models/{name:.+}/scale", self.scale_version)

    async def list(self, request: web.Request) -> web.Response:
        """Every stage, each with its running rollout (None when there is none: one query for all)."""
        running = await self._rollouts.running() if self._rollouts is not None else {}
        records = await self._deployments.list()
        listed = [r.as_json() | {"rollout": running.get(r.client_name)} for r in records]
        return _json({"deployments": listed})

    async def show(self, request: web.Request) -> web.Response:
        """The stage, its live targets and history; its rollout, per-target stats and shadow comparisons."""
        name = request.match_info["name"]
        out = (await self._deployments.show(name)).as_json()
        if self._rollouts is not None:
            out.update(await self._rollouts.describe(name))
        return _json(out)

    async def deploy(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        details = await self._deployments.deploy(
            request.match_info["name"],
            targets_of(body, placement=_placement(body)),
            stage=_text(body, "stage"),
            sticky=_text(body, "sticky"),
            actor=actor_of(request),
        )
        return _json(details.as_json())

    async def split(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        details = await self._deployments.split(
            request.match_info["name"],
            targets_of(body),
            sticky=_text(body, "sticky"),
            actor=actor_of(request),
        )
        return _json(details.as_json())

    async def scale(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        target, replicas = body.get("target"), body.get("replicas")
        if not isinstance(target, str) or not target:
            raise InvalidRequest("'target' must name one of the deployment's targets", param="target")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise InvalidRequest("'replicas' must be an integer of 1 or more", param="replicas")
        details = await self._deployments.scale(
            request.match_info["name"],
            target,
            replicas,
            placement=_placement(body),
            actor=actor_of(request),
        )
        return _json(details.as_json())

    async def scale_version(self, request: web.Request) -> web.Response:
        """N instances of a version clients name directly, where its placement allows."""
        body = await read_json(request)
        replicas = body.get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise InvalidRequest("'replicas' must be an integer of 1 or more", param="replicas")
        answer = await self._deployments.versions.scale(
            request.match_info["name"], replicas, placement=_placement(body), actor=actor_of(request)
        )
        return _json(answer)

    async def promote(self, request: web.Request) -> web.Response:
        body = await _optional_json(request)
        details = await self._deployments.promote(
            request.match_info["name"], to=_text(body, "to") or "production", actor=actor_of(request)
        )
        return _json(details.as_json())

    async def rollback(self, request: web.Request) -> web.Response:
        details = await self._deployments.rollback(request.match_info["name"], actor=actor_of(request))
        return _json(details.as_json())

    async def pause(self, request: web.Request) -> web.Response:
        record = await self._deployments.set_enabled(
            request.match_info["name"], False, actor=actor_of(request)
        )
        return _json(record.as_json())

    async def resume(self, request: web.Request) -> web.Response:
        record = await self._deployments.set_enabled(
            request.match_info["name"], True, actor=actor_of(request)
        )
        return _json(record.as_json())

    async def remove(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self._deployments.remove(name, actor=actor_of(request))
        return _json({"deleted": name})


class FleetRoutes:
    """``POST /admin/v1/apply`` (``{"spec": {...}, "dry_run": bool, "prune": bool}``: the changes, made
    unless ``dry_run``) and ``GET /admin/v1/export`` (the spec that ``apply`` takes, without secrets)."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def register(self, app: web.Application) -> None:
        app.router.add_post(f"{PREFIX}/apply", self.apply)
        app.router.add_get(f"{PREFIX}/export", self.export)

    async def apply(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        spec = body.get("spec")
        if not isinstance(spec, dict):
            raise InvalidRequest(
                "'spec' must be an object (models, connections, deployments, keys)", param="spec"
            )
        report = await self._fleet.apply(
            spec,
            dry_run=body.get("dry_run") is True,
            prune=body.get("prune") is True,
            actor=actor_of(request),
        )
        return _json(report.as_json())

    async def export(self, request: web.Request) -> web.Response:
        return _json(await self._fleet.export())


def targets_of(
    body: dict[str, Any], *, placement: PlacementConstraint | None = None
) -> list[DeploymentTarget]:
    """The body's ``targets``: ``"name=weight"`` strings or ``{"name", "weight", "replicas", "placement"}``
    objects; ``placement`` for those that carry none."""
    raw = body.get("targets")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("'targets' must be a non-empty list", param="targets")
    out: list[DeploymentTarget] = []
    default = placement or PlacementConstraint()
    for item in raw:
        if isinstance(item, str):
            out += [replace(t, placement=default) for t in parse_targets([item])]
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            weight, replicas = item.get("weight", 100), item.get("replicas", 1)
            if not isinstance(weight, int) or not isinstance(replicas, int) or isinstance(weight, bool):
                raise InvalidRequest("a target's weight and replicas are integers", param="targets")
            own = parse_placement(item["placement"]) if item.get("placement") is not None else default
            role = str(item.get("role") or "primary")
            out.append(DeploymentTarget(item["name"], weight, role, replicas, own))
        else:
            raise InvalidRequest("each target is 'name=weight' or {'name': …, 'weight': …}", param="targets")
    return out


def _placement(body: dict[str, Any]) -> PlacementConstraint | None:
    """The body's ``placement`` (absent or null: None, the target keeps its own)."""
    value = body.get("placement")
    return None if value is None else parse_placement(value)


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{key}' must be a non-empty string", param=key)
    return value


async def _optional_json(request: web.Request) -> dict[str, Any]:
    return await read_json(request) if request.can_read_body else {}
