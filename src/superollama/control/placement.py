"""Placement constraints as users set them: parsed from the admin API, merged per version, checked.

A constraint (``core.placement.PlacementConstraint``) is set on a deployment target (``deploy … --device
gpu --node beta --labels zone=b --spread``) or on a version scaled by itself (``scale VERSION --replicas
N …``). The node agent runs one pool of instances per version, so a version has **one** constraint:

- its own scale's, when it has one; else the first deployment target (by deployment name) that routes
  to it with a constraint; else none (anywhere, the server's policy);
- two sources that ask different things of the same version are refused (409): the second would be
  silently ignored otherwise.

Checks here, before anything starts: a malformed constraint is a 400 naming the parameter (``device``,
``node``, ``labels``, ``spread``); a pin to a node the registry does not know is a 404. Whether anything
fits the constraint is placement's business at each start (``agent/placement.py``: a 503 that says why).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from superollama.core.deployments import VersionScale
from superollama.core.placement import DEVICES, LABEL, PlacementConstraint
from superollama.core.routing import Deployment
from superollama.errors import Conflict, InvalidRequest, NotFound
from superollama.registry import Registry

__all__ = [
    "NO_CONSTRAINT",
    "check_node",
    "conflicting",
    "parse_label_text",
    "parse_placement",
    "wanted",
]

NO_CONSTRAINT: Final = PlacementConstraint()
_NODE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def parse_placement(value: Any) -> PlacementConstraint:
    """The API's ``placement: {device, node, labels, spread}`` (None or {}: no constraint). ``labels`` is
    an object of strings or the CLI's ``"k=v,k=v"``. A 400 naming the parameter for anything else."""
    if value is None:
        return NO_CONSTRAINT
    if not isinstance(value, Mapping):
        raise InvalidRequest(
            "'placement' must be an object: {device, node, labels, spread}", param="placement"
        )
    unknown = sorted(set(value) - {"device", "node", "labels", "spread"})
    if unknown:
        raise InvalidRequest(
            f"placement: unknown field(s) {', '.join(unknown)} (known: device, node, labels, spread)",
            param="placement",
        )
    device = value.get("device")
    if device is not None and device not in DEVICES:
        raise InvalidRequest(f"placement device {device!r}: one of {', '.join(DEVICES)}", param="device")
    node = value.get("node")
    if node is not None and (not isinstance(node, str) or not _NODE.match(node)):
        raise InvalidRequest(
            f"placement node {node!r}: a node's name (letters, digits, '.', '_', '-')", param="node"
        )
    spread = value.get("spread", False)
    if not isinstance(spread, bool):
        raise InvalidRequest("placement spread: true or false", param="spread")
    raw = value.get("labels")
    labels = parse_label_text(raw) if isinstance(raw, str) else _label_map(raw)
    return PlacementConstraint.of(device=device, node=node, labels=labels, spread=spread)


def parse_label_text(text: str) -> dict[str, str]:
    """``"gpu=a100,zone=b"`` → ``{"gpu": "a100", "zone": "b"}``; a 400 (``labels``) when malformed."""
    out: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, eq, val = item.partition("=")
        if not eq:
            raise InvalidRequest(f"label {item!r}: write key=value (zone=b,gpu=a100)", param="labels")
        out.update(_label_map({key.strip(): val.strip()}))
    return out


def _label_map(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(
            "placement labels: an object of key: value strings, or 'k=v,k=v'", param="labels"
        )
    out: dict[str, str] = {}
    for key, item in value.items():
        good_key = isinstance(key, str) and LABEL.match(key)
        if not good_key or not isinstance(item, str) or not LABEL.match(item):
            raise InvalidRequest(
                f"label {key!r}={item!r}: keys and values are letters, digits, '.', '_', '/' or '-'",
                param="labels",
            )
        out[key] = item
    return out


def wanted(
    deployments: Iterable[Deployment], scales: Iterable[VersionScale]
) -> tuple[dict[str, int], dict[str, PlacementConstraint]]:
    """Per version: the replicas wanted (the most any weighted target or its own scale asks; absent: 1)
    and its constraint (its own scale's, else the first deployment target's by name; absent: none)."""
    replicas: dict[str, int] = {}
    placements: dict[str, PlacementConstraint] = {}
    for dep in sorted(deployments, key=lambda d: d.name):
        for t in dep.targets:
            if t.weight <= 0:
                continue
            if t.replicas > replicas.get(t.name, 1):
                replicas[t.name] = t.replicas
            if not t.placement.empty:
                placements.setdefault(t.name, t.placement)
    for scale in scales:
        if scale.replicas > replicas.get(scale.version, 1):
            replicas[scale.version] = scale.replicas
        if not scale.placement.empty:
            placements[scale.version] = scale.placement
    return replicas, placements


def conflicting(
    version: str,
    placement: PlacementConstraint,
    deployments: Iterable[Deployment],
    scales: Iterable[VersionScale],
    *,
    but: str | None = None,
) -> None:
    """A 409 when another deployment target (not of stage ``but``), or the version's own scale (unless
    ``but`` is ``"scale"``), asks a different constraint of ``version``: its instances are one pool."""
    if placement.empty:
        return
    for dep in deployments:
        if dep.name == but:
            continue
        for t in dep.targets:
            if t.name == version and t.weight > 0 and not t.placement.empty and t.placement != placement:
                raise Conflict(
                    f"{version} runs under deployment {dep.name!r} with placement {t.placement.describe()}; "
                    f"its instances are one pool: ask the same ({placement.describe()} differs), or none",
                    param="placement",
                )
    if but == "scale":
        return
    for scale in scales:
        if scale.version == version and not scale.placement.empty and scale.placement != placement:
            raise Conflict(
                f"{version} is scaled with placement {scale.placement.describe()} (superollama scale "
                f"{version} --replicas N); ask the same ({placement.describe()} differs), or none",
                param="placement",
            )


async def check_node(registry: Registry, placement: PlacementConstraint) -> None:
    """A pin to a node the registry does not know: 404 (whether it can take anything is placement's)."""
    if placement.node is None:
        return
    known = sorted(n.name for n in await registry.nodes.list())
    if placement.node not in known:
        names = ", ".join(known) or "none"
        raise NotFound(f"node {placement.node!r} not found (nodes: {names})", param="node")
