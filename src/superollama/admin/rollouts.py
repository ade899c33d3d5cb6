"""Admin API for canary rollouts and shadow targets; the CLI's ``rollout`` and ``shadow`` are its clients.

``POST /admin/v1/deployments/{name}/rollout`` ``{"to", "canary", "step", "every", "max_error_rate",
"max_p95_latency", "min_samples"}`` (durations as ``"2m"``/``"30s"`` or seconds; rates as ``"1%"``;
``max_p95_latency`` as ``"+20%"`` (against the stable target) or ``"800ms"``), ``GET`` the same path for
its state, decisions and live per-target stats, ``POST …/rollout/abort`` to go back to the stable target.

``PUT /admin/v1/deployments/{name}/shadow`` ``{"to", "percent"}``, ``DELETE`` it to stop, ``GET`` it for
the comparisons (aggregates and the last ``?last=N`` samples).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from superollama.admin.routes import PREFIX, actor_of
from superollama.control.rollouts import RolloutManager
from superollama.core.canary import CanaryPolicy, parse_duration, parse_latency_bound, parse_percent
from superollama.errors import InvalidRequest, NotFound
from superollama.gateway import read_json
from superollama.gateway.responses import json_response as _json

__all__ = ["RolloutRoutes", "policy_of"]


class RolloutRoutes:
    def __init__(self, rollouts: RolloutManager) -> None:
        self._rollouts = rollouts

    def register(self, app: web.Application) -> None:
        r = app.router
        base = f"{PREFIX}/deployments/{{name}}"
        r.add_post(base + "/rollout", self.begin)
        r.add_get(base + "/rollout", self.status)
        r.add_post(base + "/rollout/abort", self.abort)
        r.add_put(base + "/shadow", self.shadow)
        r.add_delete(base + "/shadow", self.shadow_off)
        r.add_get(base + "/shadow", self.shadow_summary)

    async def begin(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        to = body.get("to")
        if not isinstance(to, str) or not to:
            raise InvalidRequest("'to' names the version (or connection model) to roll out", param="to")
        record = await self._rollouts.begin(
            request.match_info["name"], to, policy_of(body), actor=actor_of(request)
        )
        return _json(record.as_json(), status=201)

    async def status(self, request: web.Request) -> web.Response:
        return _json(await self._rollouts.status(request.match_info["name"]))

    async def abort(self, request: web.Request) -> web.Response:
        record = await self._rollouts.abort(request.match_info["name"], actor=actor_of(request))
        return _json(record.as_json())

    async def shadow(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        to, percent = body.get("to"), body.get("percent", 5)
        if not isinstance(to, str) or not to:
            raise InvalidRequest("'to' names the version (or connection model) to mirror to", param="to")
        if isinstance(percent, bool) or not isinstance(percent, int):
            raise InvalidRequest("'percent' is an integer from 0 to 100", param="percent")
        name = request.match_info["name"]
        return _json(await self._rollouts.shadow(name, to, percent, actor=actor_of(request)))

    async def shadow_off(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return _json(await self._rollouts.shadow(name, None, 0, actor=actor_of(request)))

    async def shadow_summary(self, request: web.Request) -> web.Response:
        try:
            last = int(request.query.get("last", "10"))
        except ValueError:
            raise InvalidRequest("'last' is a number of samples", param="last") from None
        summary = await self._rollouts.shadow_summary(request.match_info["name"], last=max(0, min(last, 500)))
        if summary is None:
            raise NotFound(f"deployment {request.match_info['name']!r} has no shadow target", param="name")
        return _json(summary)


def policy_of(body: dict[str, Any]) -> CanaryPolicy:
    """The rollout policy a request body asks for (defaults: 10 % canary, +20 % every 2 minutes, at most
    1 % errors and the stable target's p95 +20 %, 20 samples)."""
    default = CanaryPolicy()
    try:
        latency = body.get("max_p95_latency", "+20%")
        max_p95, relative = (None, True) if latency is None else parse_latency_bound(_scalar(latency))
        return CanaryPolicy(
            canary=_int(body, "canary", default.canary),
            step=_int(body, "step", default.step),
            every=parse_duration(_scalar(body.get("every", default.every))),
            max_error_rate=parse_percent(_scalar(body.get("max_error_rate", "1%")), "max error rate"),
            max_p95=max_p95,
            relative=relative,
            min_samples=_int(body, "min_samples", default.min_samples),
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="policy") from None


def _scalar(value: Any) -> str | float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is neither a number nor a string")
    return value


def _int(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if isinstance(value, str):
        value = value.strip().rstrip("%")
        if value.isdigit():
            return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} is a whole number, got {value!r}")
    return value
