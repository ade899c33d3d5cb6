"""Canary analysis: per-target window statistics and the decision over them (pure, no I/O).

**On the data plane** each gateway process keeps one ``TargetWindow`` per (deployment, target): a ring of
``slots`` time slots, each a request count, an error count and a latency histogram of ``BUCKETS`` fixed,
log-spaced bounds. Recording a request is an index computation and three integer increments into lists
allocated when the window was made — nothing is allocated per request. A slot older than the window is
zeroed in place when its turn comes again. ``stats()`` sums the live slots into a ``WindowStats``.

**Across gateways** a ``WindowStats`` is mergeable: counts and histogram buckets add up, so the leader sums
what every gateway reported (``WindowStats.merge``) and reads the error rate and p95 of the sum — the p95
of the union of all requests, not an average of per-gateway p95s.

**The decision** (``decide``) compares the canary target against the stable one over the same window:
too few canary samples → hold; error rate above the bound → roll back; p95 above the bound (relative to
the stable target's p95, or absolute) → roll back; otherwise step the weight up, or promote at 100 %.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "BUCKETS",
    "BUCKET_BOUNDS",
    "CanaryPolicy",
    "Decision",
    "TargetWindow",
    "WindowStats",
    "decide",
    "parse_duration",
    "parse_latency_bound",
    "parse_percent",
]

# Latency histogram: bucket i holds latencies in (BOUND[i-1], BOUND[i]] seconds; bounds grow by 10 %
# from 1 ms to ~360 s (the p95 read from it is within 10 % of the exact one); the last bucket is open.
_FACTOR: Final = 1.1
BUCKET_BOUNDS: Final[tuple[float, ...]] = tuple(0.001 * _FACTOR**i for i in range(135))
BUCKETS: Final = len(BUCKET_BOUNDS) + 1

Action = Literal["hold", "step", "promote", "rollback"]


@dataclass(frozen=True)
class WindowStats:
    """Requests, errors and the latency histogram of one target over a window."""

    count: int = 0
    errors: int = 0
    buckets: tuple[int, ...] = ()

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of latency in seconds (linear within its bucket); None without samples."""
        total = sum(self.buckets)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.buckets):
            if n and seen + n >= rank:
                low = BUCKET_BOUNDS[i - 1] if i > 0 else 0.0
                high = BUCKET_BOUNDS[i] if i < len(BUCKET_BOUNDS) else BUCKET_BOUNDS[-1] * _FACTOR
                return low + (high - low) * max(0.0, rank - seen) / n
            seen += n
        return BUCKET_BOUNDS[-1]  # pragma: no cover - the loop returns once seen reaches the total

    @property
    def p95(self) -> float | None:
        return self.quantile(0.95)

    @staticmethod
    def merge(parts: Iterable[WindowStats]) -> WindowStats:
        count = errors = 0
        buckets = [0] * BUCKETS
        for p in parts:
            count += p.count
            errors += p.errors
            for i, n in enumerate(p.buckets[:BUCKETS]):
                buckets[i] += n
        return WindowStats(count, errors, tuple(buckets))

    def as_json(self) -> dict[str, object]:
        p95 = self.p95
        return {
            "requests": self.count,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p95_ms": None if p95 is None else round(p95 * 1000, 1),
        }


class TargetWindow:
    """A sliding window over the last ``slots * slot_seconds`` seconds (see the module's docstring)."""

    __slots__ = ("_counts", "_errors", "_hist", "_slot_seconds", "_slots", "_ticks")

    def __init__(self, window: float, slots: int = 12) -> None:
        self._slots = max(2, slots)
        self._slot_seconds = max(window / self._slots, 0.001)
        self._ticks = [-1] * self._slots
        self._counts = [0] * self._slots
        self._errors = [0] * self._slots
        self._hist = [[0] * BUCKETS for _ in range(self._slots)]

    def record(self, now: float, latency: float, error: bool) -> None:
        tick = int(now / self._slot_seconds)
        i = tick % self._slots
        if self._ticks[i] != tick:  # the slot's turn came again: forget what it held
            self._ticks[i] = tick
            self._counts[i] = 0
            self._errors[i] = 0
            hist = self._hist[i]
            for b in range(BUCKETS):
                hist[b] = 0
        self._counts[i] += 1
        if error:
            self._errors[i] += 1
        self._hist[i][bisect.bisect_left(BUCKET_BOUNDS, latency)] += 1

    def stats(self, now: float) -> WindowStats:
        oldest = int(now / self._slot_seconds) - self._slots + 1
        count = errors = 0
        buckets = [0] * BUCKETS
        for i in range(self._slots):
            if self._ticks[i] < oldest:
                continue
            count += self._counts[i]
            errors += self._errors[i]
            for b, n in enumerate(self._hist[i]):
                if n:
                    buckets[b] += n
        return WindowStats(count, errors, tuple(buckets))


@dataclass(frozen=True)
class CanaryPolicy:
    """How a rollout moves: start at ``canary`` %, add ``step`` % every ``every`` seconds while within
    bounds. ``max_p95`` is relative to the stable target's p95 (``relative``: 0.2 = +20 %) or absolute
    seconds; ``min_samples`` canary requests are needed before any judgement; ``latency_slack`` seconds
    of p95 difference are never a reason to roll back (the histogram's resolution on tiny latencies)."""

    canary: int = 10
    step: int = 20
    every: float = 120.0
    max_error_rate: float = 0.01
    max_p95: float | None = 0.2
    relative: bool = True
    min_samples: int = 20
    latency_slack: float = 0.005

    def as_json(self) -> dict[str, object]:
        return {
            "canary": self.canary,
            "step": self.step,
            "every": self.every,
            "max_error_rate": self.max_error_rate,
            "max_p95": self.max_p95,
            "relative": self.relative,
            "min_samples": self.min_samples,
            "latency_slack": self.latency_slack,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CanaryPolicy:
        def num(key: str, default: float) -> float:
            value = data.get(key, default)
            return float(value) if isinstance(value, int | float) else default

        max_p95 = data.get("max_p95")
        return cls(
            canary=int(num("canary", 10)),
            step=int(num("step", 20)),
            every=num("every", 120.0),
            max_error_rate=num("max_error_rate", 0.01),
            max_p95=float(max_p95) if isinstance(max_p95, int | float) else None,
            relative=data.get("relative", True) is not False,
            min_samples=int(num("min_samples", 20)),
            latency_slack=num("latency_slack", 0.005),
        )


@dataclass(frozen=True)
class Decision:
    action: Action
    weight: int  # the canary's weight after the decision
    reason: str


def decide(weight: int, canary: WindowStats, stable: WindowStats, policy: CanaryPolicy) -> Decision:
    """What a rollout does next, from the canary's and the stable target's stats over the same window."""
    if canary.count < policy.min_samples:
        return Decision("hold", weight, f"{canary.count} canary requests < {policy.min_samples} needed")
    rate = canary.error_rate
    if rate > policy.max_error_rate:
        return Decision(
            "rollback",
            0,
            f"canary error rate {rate:.2%} > {policy.max_error_rate:.2%} "
            f"({canary.errors}/{canary.count}; stable {stable.error_rate:.2%})",
        )
    if policy.max_p95 is not None:
        p95 = canary.p95 or 0.0
        if policy.relative:
            if stable.count < policy.min_samples:
                return Decision(
                    "hold", weight, f"{stable.count} stable requests < {policy.min_samples} to compare p95"
                )
            base = stable.p95 or 0.0
            bound = base * (1 + policy.max_p95)
            shown = f"stable {base * 1000:.1f} ms +{policy.max_p95:.0%}"
        else:
            base, bound = 0.0, policy.max_p95
            shown = f"{bound * 1000:.1f} ms"
        if p95 > bound and p95 - max(base, bound) > policy.latency_slack:
            return Decision("rollback", 0, f"canary p95 {p95 * 1000:.1f} ms > {shown}")
    nxt = weight + policy.step
    if nxt >= 100:
        return Decision("promote", 100, f"canary within bounds at {weight} %: promoted to 100 %")
    return Decision(
        "step", nxt, f"within bounds ({canary.count} requests, {rate:.2%} errors): {weight} → {nxt} %"
    )


def parse_percent(text: str | float, what: str) -> float:
    """``"1%"``, ``"1"`` or ``0.01`` (a number below 1 given as a number is a fraction) → 0.01."""
    if isinstance(text, int | float):
        value = float(text)
        return value if value < 1 else value / 100
    raw = text.strip()
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a percentage such as 1%") from None
    if math.isnan(value) or value < 0:
        raise ValueError(f"{what}: {text!r} must be 0 % or more")
    return value / 100


def parse_latency_bound(text: str | float) -> tuple[float, bool]:
    """``"+20%"`` → (0.2, relative); ``"500ms"`` / ``"2s"`` / ``2.0`` → (seconds, absolute)."""
    if isinstance(text, int | float):
        return float(text), False
    raw = text.strip().lower()
    try:
        if raw.endswith("%"):
            return float(raw.lstrip("+").rstrip("%")) / 100, True
        if raw.endswith("ms"):
            return float(raw[:-2]) / 1000, False
        return float(raw.rstrip("s")), False
    except ValueError:
        raise ValueError(f"max p95 latency: {text!r} is neither +N% nor a duration (500ms, 2s)") from None


def parse_duration(text: str | float) -> float:
    """``"2m"``, ``"30s"``, ``"1.5"`` (seconds), ``"500ms"`` → seconds."""
    if isinstance(text, int | float):
        return float(text)
    raw = text.strip().lower()
    units: Sequence[tuple[str, float]] = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    try:
        for suffix, scale in units:
            if raw.endswith(suffix):
                return float(raw[: -len(suffix)]) * scale
        return float(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration such as 2m, 30s or 500ms") from None
