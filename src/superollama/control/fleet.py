"""Declarative fleet: ``apply`` a spec (models to pull, connections, deployments, keys) and ``export`` one.

The spec is plain data (the CLI reads it from YAML)::

    models:       [{name: smollm2:135m, source: hf://…, enabled: true}]
    connections:  [{name: lab, kind: ollama, url: http://…, api_key: env:LAB_KEY, options: {}, enabled: true}]
    deployments:  [{name: chat, stage: production, sticky: user, enabled: true,
                    targets: [{name: smollm2:135m, weight: 90}, {name: smollm2:135m-b, weight: 10}]}]
    keys:         [{name: ci, role: user, models: [chat], rpm: 60}]

``apply`` compares the spec with what is, item by item, and makes only the differences (a second run
changes nothing); ``dry_run`` only reports them; ``prune`` also removes what the spec no longer names.
No secret is ever in an export: a connection's key is ``env:VAR`` (a reference, kept) or ``stored`` (an
encrypted key this server holds; apply leaves it as it is), and keys are exported without their secret
(apply prints a new key's secret once, as ``keys create`` does). Versions are immutable: a model whose
source changed is reported, not replaced; a key's limits are fixed at creation, likewise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from superollama.control.connections import ConnectionManager
from superollama.control.controller import Controller
from superollama.control.deployments import DeploymentManager
from superollama.control.placement import parse_placement
from superollama.core.deployments import targets_from_json, targets_json
from superollama.core.routing import PRODUCTION
from superollama.errors import InvalidRequest
from superollama.security.manage import KeyManager, KeySpec

__all__ = ["Change", "Fleet", "FleetReport"]

SECTIONS = ("models", "connections", "deployments", "keys")
_KEY_FIELDS = ("role", "models", "rpm", "tpm", "model_limits", "budget_usd", "budget_period")


@dataclass(frozen=True)
class Change:
    kind: str  # model | connection | deployment | key
    name: str
    action: str  # create | update | delete | differs (reported, not changed)
    detail: str = ""

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "action": self.action, "detail": self.detail}


@dataclass
class FleetReport:
    changes: list[Change] = field(default_factory=list)
    applied: bool = False
    secrets: dict[str, str] = field(default_factory=dict)  # new keys: name → secret (shown once)

    def as_json(self) -> dict[str, Any]:
        return {"applied": self.applied, "changes": [c.as_json() for c in self.changes], "keys": self.secrets}


Step = Callable[[], Awaitable[None]]


@dataclass
class _Plan:
    report: FleetReport
    steps: list[Step]
    prune: bool
    actor: str


class Fleet:
    def __init__(
        self,
        controller: Controller,
        deployments: DeploymentManager,
        connections: ConnectionManager | None,
        keys: KeyManager,
    ) -> None:
        self._controller = controller
        self._deployments = deployments
        self._connections = connections
        self._keys = keys

    async def export(self) -> dict[str, Any]:
        models = [
            {"name": v.name, "source": v.source, "enabled": v.enabled}
            for v in await self._controller.list_versions()
        ]
        conns = []
        for state in self._connections.states() if self._connections else []:
            r = state.record
            item: dict[str, Any] = {"name": r.name, "kind": r.kind, "url": r.url, "enabled": r.enabled}
            if r.secret:
                item["api_key"] = r.secret if r.secret.startswith("env:") else "stored"
            if r.options:
                item["options"] = dict(r.options)
            conns.append(item)
        deps = [
            {
                "name": d.name,
                "stage": d.stage,
                "sticky": d.sticky,
                "enabled": d.enabled,
                "targets": [
                    {"name": t["name"], "weight": t["weight"]}
                    | ({"replicas": t["replicas"]} if t["replicas"] != 1 else {})
                    | ({"placement": t["placement"]} if t["placement"] else {})
                    for t in targets_json(d.targets)
                ],
            }
            for d in await self._deployments.list()
        ]
        keys = [
            {"name": k.name, **{f: _plain(getattr(k, f)) for f in _KEY_FIELDS}}
            for k in await self._keys.list()
            if k.revoked_at is None
        ]
        return {"models": models, "connections": conns, "deployments": deps, "keys": keys}

    async def apply(
        self, spec: Mapping[str, Any], *, dry_run: bool = False, prune: bool = False, actor: str = "apply"
    ) -> FleetReport:
        for key in spec:
            if key not in SECTIONS:
                raise InvalidRequest(f"unknown section {key!r} (known: {', '.join(SECTIONS)})", param="spec")
        current = await self.export()
        plan = _Plan(FleetReport(), [], prune, actor)
        report = plan.report
        self._models(_items(spec, "models"), current["models"], plan)
        self._conns(_items(spec, "connections"), current["connections"], plan)
        self._deps(_items(spec, "deployments"), current["deployments"], plan)
        self._keys_plan(_items(spec, "keys"), current["keys"], plan)
        if not dry_run:
            for step in _ordered(plan.steps):
                await step()
            report.applied = True
        return report

    # -- planning ------------------------------------------------------------------------------
    def _models(self, want: list[dict[str, Any]], have: list[dict[str, Any]], plan: _Plan) -> None:
        report, steps, prune, actor = plan.report, plan.steps, plan.prune, plan.actor
        c = self._controller
        now = {m["name"]: m for m in have}
        named = set()
        for m in want:
            name, source = _text(m, "name", "models"), _text(m, "source", "models")
            named.add(name)
            old = now.get(name)
            if old is None:
                report.changes.append(Change("model", name, "create", f"pull {source}"))
                steps.append(_step(0, partial(c.pull, source, name, actor=actor)))
                continue
            if old["source"] != source:
                report.changes.append(Change("model", name, "differs", f"source {old['source']} (kept)"))
            enabled = bool(m.get("enabled", True))
            if enabled != old["enabled"]:
                report.changes.append(Change("model", name, "update", f"enabled → {enabled}"))
                steps.append(_step(0, partial(c.set_enabled, name, enabled, actor=actor)))
        for name in sorted(set(now) - named) if prune else ():
            report.changes.append(Change("model", name, "delete"))
            steps.append(_step(9, partial(c.remove, name, force=True, actor=actor)))

    def _conns(self, want: list[dict[str, Any]], have: list[dict[str, Any]], plan: _Plan) -> None:
        report, steps, prune, actor = plan.report, plan.steps, plan.prune, plan.actor
        cm = self._connections
        now = {x["name"]: x for x in have}
        named = set()
        for x in want:
            name = _text(x, "name", "connections")
            named.add(name)
            kind, url = _text(x, "kind", "connections"), _text(x, "url", "connections").rstrip("/")
            key, options = x.get("api_key"), dict(x.get("options") or {})
            old = now.get(name)
            if cm is None:
                raise InvalidRequest("this server manages no connections", param="connections")
            if old is None:
                if key == "stored":
                    raise InvalidRequest(f"connection {name!r}: give its key as env:VAR", param="connections")
                report.changes.append(Change("connection", name, "create", f"{kind} at {url}"))
                steps.append(_step(1, partial(self._connect, kind, url, name, key, options, actor=actor)))
                continue
            same = (old["kind"], old["url"], old.get("options") or {}) == (kind, url, options)
            if not same or (key != "stored" and key != old.get("api_key")):
                if old.get("api_key") == "stored" and key == "stored":
                    report.changes.append(
                        Change("connection", name, "differs", "its stored key is not in the file")
                    )
                else:
                    report.changes.append(Change("connection", name, "update", f"{kind} at {url}"))
                    steps.append(_step(1, partial(cm.remove, name, actor=actor)))
                    steps.append(_step(1, partial(self._connect, kind, url, name, key, options, actor=actor)))
            enabled = bool(x.get("enabled", True))
            if enabled != old["enabled"]:
                report.changes.append(Change("connection", name, "update", f"enabled → {enabled}"))
                steps.append(_step(1, partial(cm.set_enabled, name, enabled, actor=actor)))
        for name in sorted(set(now) - named) if prune and cm is not None else ():
            report.changes.append(Change("connection", name, "delete"))
            steps.append(_step(8, partial(cm.remove, name, actor=actor)))  # type: ignore[union-attr]

    def _deps(self, want: list[dict[str, Any]], have: list[dict[str, Any]], plan: _Plan) -> None:
        report, steps, prune, actor = plan.report, plan.steps, plan.prune, plan.actor
        d = self._deployments
        now = {_dep_name(x): x for x in have}
        named = set()
        for x in want:
            base, stage = _text(x, "name", "deployments"), str(x.get("stage") or PRODUCTION)
            name = _dep_name({"name": base, "stage": stage})
            named.add(name)
            raw = x.get("targets")
            if not isinstance(raw, list) or not raw:
                raise InvalidRequest(
                    f"deployment {name!r}: 'targets' is a non-empty list", param="deployments"
                )
            targets = tuple(  # a file's placement is checked like the API's (400 naming the field)
                replace(
                    t, placement=parse_placement(r.get("placement")) if isinstance(r, dict) else t.placement
                )
                for t, r in zip(targets_from_json(raw), raw, strict=True)
            )
            sticky, enabled = str(x.get("sticky") or "none"), bool(x.get("enabled", True))
            old = now.get(name)
            shown = " ".join(f"{t.name}={t.weight}" for t in targets)
            if old is None or (targets_from_json(old["targets"]), old["sticky"]) != (targets, sticky):
                action = "create" if old is None else "update"
                report.changes.append(Change("deployment", name, action, f"{shown} sticky {sticky}"))
                deploy = partial(d.deploy, base, targets, stage=stage, sticky=sticky, actor=actor)
                steps.append(_step(2, deploy))
            if (old["enabled"] if old else True) != enabled:
                report.changes.append(Change("deployment", name, "update", f"enabled → {enabled}"))
                steps.append(_step(2, partial(d.set_enabled, name, enabled, actor=actor)))
        for name in sorted(set(now) - named) if prune else ():
            report.changes.append(Change("deployment", name, "delete"))
            steps.append(_step(7, partial(d.remove, name, actor=actor)))

    async def _connect(
        self, kind: str, url: str, name: str, key: Any, options: dict[str, Any], *, actor: str
    ) -> None:
        assert self._connections is not None
        await self._connections.add(kind, url, name=name, api_key=key, options=options, actor=actor)

    def _keys_plan(self, want: list[dict[str, Any]], have: list[dict[str, Any]], plan: _Plan) -> None:
        report, steps, prune, actor = plan.report, plan.steps, plan.prune, plan.actor
        now = {k["name"]: k for k in have}
        named = set()
        for k in want:
            name = _text(k, "name", "keys")
            named.add(name)
            spec = KeySpec(name=name, **{f: _spec_value(f, k[f]) for f in _KEY_FIELDS if f in k})
            old = now.get(name)
            if old is None:
                report.changes.append(Change("key", name, "create", f"role {spec.role}"))

                async def create(s: KeySpec = spec) -> None:
                    issued = await self._keys.create(s, actor=actor)
                    report.secrets[s.name] = issued.key

                steps.append(_step(3, create))
            elif any(_plain(getattr(spec, f)) != old[f] for f in _KEY_FIELDS):
                report.changes.append(Change("key", name, "differs", "a key's limits are fixed at creation"))
        for name in sorted(set(now) - named) if prune else ():
            report.changes.append(Change("key", name, "delete", "revoke"))
            steps.append(_step(6, partial(self._keys.revoke, name, actor=actor)))


def _step(order: int, fn: Callable[[], Awaitable[Any]]) -> Step:
    async def run() -> None:
        await fn()

    run.order = order  # type: ignore[attr-defined]
    return run


def _ordered(steps: Sequence[Step]) -> list[Step]:
    """Creates in section order (models, connections, deployments, keys), then removals in reverse."""
    return sorted(steps, key=lambda s: getattr(s, "order", 0))


def _items(spec: Mapping[str, Any], section: str) -> list[dict[str, Any]]:
    items = spec.get(section) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise InvalidRequest(f"'{section}' must be a list of objects", param=section)
    return items


def _text(item: Mapping[str, Any], key: str, section: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"every entry of '{section}' needs a '{key}'", param=section)
    return value.strip()


def _dep_name(x: Mapping[str, Any]) -> str:
    stage = x.get("stage") or PRODUCTION
    return str(x["name"]) if stage == PRODUCTION else f"{x['name']}@{stage}"


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _spec_value(name: str, value: Any) -> Any:
    return tuple(value) if name == "models" and isinstance(value, list) else value
