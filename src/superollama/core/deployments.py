"""Deployments as the registry keeps them: the desired target set of each stage, and its history.

A deployment stage (``chat`` is ``chat`` at stage ``production``; ``chat@staging`` at ``staging``) names a
set of weighted targets. Every change of that set keeps the previous one as history, so a rollback is
"make the latest history entry current again".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from superollama.core.canary import CanaryPolicy
from superollama.core.placement import PlacementConstraint
from superollama.core.routing import PRODUCTION, Deployment, DeploymentTarget

__all__ = [
    "DeploymentRecord",
    "HistoryEntry",
    "RolloutRecord",
    "ShadowSample",
    "VersionScale",
    "targets_from_json",
    "targets_json",
]


@dataclass(frozen=True)
class DeploymentRecord:
    name: str  # the deployment's base name: "chat"
    stage: str = PRODUCTION
    targets: tuple[DeploymentTarget, ...] = ()
    sticky: str = "none"
    enabled: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def client_name(self) -> str:
        """What clients send in ``model``: ``chat`` for production, ``chat@staging`` otherwise."""
        return self.name if self.stage == PRODUCTION else f"{self.name}@{self.stage}"

    def routing(self) -> Deployment:
        created = int(self.created_at.timestamp()) if self.created_at else 0
        return Deployment(self.client_name, self.targets, self.sticky, self.enabled, created)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stage": self.stage,
            "model": self.client_name,
            "targets": targets_json(self.targets),
            "sticky": self.sticky,
            "enabled": self.enabled,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(frozen=True)
class VersionScale:
    """A version scaled by itself (``superollama scale VERSION --replicas N …``): clients name the version
    directly, and this says how many instances of it run and where they may."""

    version: str
    replicas: int = 1
    placement: PlacementConstraint = field(default_factory=PlacementConstraint)
    updated_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "replicas": self.replicas,
            "placement": None if self.placement.empty else self.placement.as_json(),
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(frozen=True)
class HistoryEntry:
    """A target set a stage had before a change (newest first in listings)."""

    id: int
    targets: tuple[DeploymentTarget, ...]
    sticky: str
    replaced_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "targets": targets_json(self.targets),
            "sticky": self.sticky,
            "replaced_at": self.replaced_at.isoformat(),
        }


def targets_json(targets: Iterable[DeploymentTarget]) -> list[dict[str, Any]]:
    """Targets as the registry keeps them and the API shows them (``placement``: null when it asks
    nothing)."""
    return [
        {
            "name": t.name,
            "weight": t.weight,
            "role": t.role,
            "replicas": t.replicas,
            "placement": None if t.placement.empty else t.placement.as_json(),
        }
        for t in targets
    ]


def targets_from_json(data: Iterable[Mapping[str, Any]]) -> tuple[DeploymentTarget, ...]:
    return tuple(
        DeploymentTarget(
            str(t["name"]),
            int(t["weight"]),
            str(t.get("role") or "primary"),
            int(t.get("replicas") or 1),
            PlacementConstraint.from_json(t.get("placement")),
        )
        for t in data
    )


ROLLOUT_STATES = ("running", "promoted", "rolled_back", "aborted")


@dataclass(frozen=True)
class RolloutRecord:
    """A canary rollout of one deployment stage: traffic moves from ``stable`` to ``target`` by policy.

    ``decisions`` are every judgement the analysis made (newest last), as JSON objects."""

    name: str
    stage: str
    state: str  # running | promoted | rolled_back | aborted
    stable: str
    target: str
    weight: int
    policy: CanaryPolicy
    decisions: tuple[dict[str, Any], ...]
    next_at: datetime
    started_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def client_name(self) -> str:
        return self.name if self.stage == PRODUCTION else f"{self.name}@{self.stage}"

    def as_json(self) -> dict[str, Any]:
        return {
            "deployment": self.client_name,
            "state": self.state,
            "stable": self.stable,
            "target": self.target,
            "weight": self.weight,
            "policy": self.policy.as_json(),
            "decisions": list(self.decisions),
            "next_at": self.next_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(frozen=True)
class ShadowSample:
    """One mirrored request: how the shadow target's answer compared with the one the client got."""

    deployment: str
    target: str
    primary_target: str
    primary_latency: float
    shadow_latency: float | None
    primary_length: int
    shadow_length: int | None
    exact: bool
    similarity: float | None = None
    error: str | None = None
    at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat() if self.at else None,
            "target": self.target,
            "primary_target": self.primary_target,
            "primary_latency_ms": round(self.primary_latency * 1000, 1),
            "shadow_latency_ms": None
            if self.shadow_latency is None
            else round(self.shadow_latency * 1000, 1),
            "primary_length": self.primary_length,
            "shadow_length": self.shadow_length,
            "exact": self.exact,
            "similarity": self.similarity,
            "error": self.error,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
