"""What a user asks of where a target's instances run: ``PlacementConstraint`` (a value, no I/O).

A deployment target (``DeploymentTarget.placement``) or a version scaled by itself
(``superollama scale VERSION --replicas N …``) carries one; the control plane hands it to the node agent
with every start of that version's instances — the first, the added replicas, a replacement, a swap —
and placement (``agent/placement.py``) honours it:

- ``device``: ``cpu``, ``gpu``, or ``None`` (any: GPUs first, the CPU when none fits);
- ``node``: pinned to that node only;
- ``labels``: the node must carry every ``key=value`` (``nodes label``, ``agent --join --labels``);
- ``spread``: the version's replicas go to the nodes with the fewest of them first, whatever the
  server-wide policy (``SUPEROLLAMA_PLACEMENT_POLICY``).

The empty constraint (the default) asks nothing. Labels are a sorted tuple of pairs so that the value
stays hashable and compares equal however it was written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["DEVICES", "LABEL", "PlacementConstraint", "labels_text"]

DEVICES: Final[tuple[str, ...]] = ("cpu", "gpu", "any")
LABEL: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")  # a label's key or value


@dataclass(frozen=True)
class PlacementConstraint:
    device: str | None = None  # "cpu" | "gpu" | None (any)
    node: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    spread: bool = False

    @classmethod
    def of(
        cls,
        *,
        device: str | None = None,
        node: str | None = None,
        labels: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        spread: bool = False,
    ) -> PlacementConstraint:
        pairs = labels.items() if isinstance(labels, Mapping) else labels
        return cls(
            device=None if device in (None, "", "any") else device,
            node=node or None,
            labels=tuple(sorted((str(k), str(v)) for k, v in pairs)),
            spread=bool(spread),
        )

    @property
    def empty(self) -> bool:
        return self == PlacementConstraint()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device or "any",
            "node": self.node,
            "labels": self.label_map,
            "spread": self.spread,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> PlacementConstraint:
        """From what ``as_json`` wrote (the registry's rows: trusted, checked when they were written)."""
        if not data:
            return cls()
        return cls.of(
            device=data.get("device"),
            node=data.get("node"),
            labels=dict(data.get("labels") or {}),
            spread=bool(data.get("spread")),
        )

    def describe(self) -> str:
        """``device=gpu node=beta labels=zone=b spread`` (``-`` when empty): the CLI's column."""
        parts = []
        if self.device:
            parts.append(f"device={self.device}")
        if self.node:
            parts.append(f"node={self.node}")
        if self.labels:
            parts.append("labels=" + labels_text(self.labels))
        if self.spread:
            parts.append("spread")
        return " ".join(parts) or "-"


def labels_text(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels)
