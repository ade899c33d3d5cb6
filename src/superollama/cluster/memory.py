"""The estimate corrected by the memory observed after a load (no Ray here).

Placement fits each instance with its estimate (``agent/estimate.py``), made before anything runs. Once an
instance has loaded, its actor reports what its model process uses (``observed``: the resident set of the
process and its children on a CPU; the GPU memory NVML reports for them on a GPU). The rule, per version
and device kind (``cpu``, ``cuda``): later placements need

    max(estimate, largest observed x 1.05)

— never less than the estimate (an instance just loaded has not yet filled its KV cache or touched every
mapped page), and more when a load was seen to take more than estimated (5 % of head room over it).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

from superollama.agent.estimate import MemoryEstimate

__all__ = ["MARGIN", "ObservedMemory", "corrected", "observed_bytes"]

MARGIN = 1.05
_MIB = 1024 * 1024


def corrected(estimate: MemoryEstimate, observed: int | None, margin: float = MARGIN) -> MemoryEstimate:
    """``estimate`` raised to ``observed x margin`` when that is larger; the difference goes to the
    overhead and the basis says so."""
    if observed is None or observed <= 0:
        return estimate
    need = math.ceil(observed * margin)
    if need <= estimate.total:
        return estimate
    return MemoryEstimate(
        weights=estimate.weights,
        kv_cache=estimate.kv_cache,
        compute=estimate.compute,
        overhead=estimate.overhead + need - estimate.total,
        basis=f"{estimate.basis}; raised to the observed {observed / _MIB:.1f} MiB x {margin:g}",
    )


def observed_bytes(device: str, observed: dict[str, Any] | None) -> int | None:
    """What an instance on ``device`` was seen to use there: its RSS on ``cpu``, its GPU memory on
    ``cuda:N`` (None when NVML did not say)."""
    if not observed:
        return None
    value = observed.get("rss") if device == "cpu" else observed.get("gpu")
    return int(value) if isinstance(value, int) and value > 0 else None


@dataclass(frozen=True)
class _Seen:
    bytes: int
    node: str
    instance: str


class ObservedMemory:
    """The largest memory observed per (version, device kind), from the loads of this control plane."""

    def __init__(self, margin: float = MARGIN) -> None:
        self.margin = margin
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._lock = threading.Lock()

    def record(
        self, version: str, kind: str, observed: int | None, *, node: str = "", instance: str = ""
    ) -> None:
        if observed is None or observed <= 0:
            return
        with self._lock:
            prior = self._seen.get((version, kind))
            if prior is None or observed > prior.bytes:
                self._seen[(version, kind)] = _Seen(observed, node, instance)

    def get(self, version: str, kind: str) -> int | None:
        with self._lock:
            seen = self._seen.get((version, kind))
        return seen.bytes if seen is not None else None

    def correct(self, version: str, kind: str, estimate: MemoryEstimate) -> MemoryEstimate:
        return corrected(estimate, self.get(version, kind), self.margin)
