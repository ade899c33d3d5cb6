"""A small Prometheus text exposition (format 0.0.4): counters, gauges and histograms with labels.

Why not ``prometheus_client``: on this machine, the six labelled updates a finished request makes cost
~64 µs through ``.labels(...)`` and ~17 µs with the children cached (each update takes a lock), against
~4 µs on the plain slots below. ``prometheus_client`` is still what the tests parse the output with.

Not thread-safe by design: update and render from the event loop's thread only (no locks to pay for).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence

__all__ = ["CONTENT_TYPE", "Counter", "CounterChild", "Gauge", "Histogram", "HistogramChild", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class HistogramChild:
    """``counts[i]`` holds the observations in bucket ``i`` alone (not cumulative); the last slot is +Inf."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # ``le`` is inclusive: a value equal to a bound belongs to that bound's bucket.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)

    def _check(self, values: tuple[str, ...]) -> None:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")


class Counter(_Family):
    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self.children: dict[tuple[str, ...], CounterChild] = {}

    def labels(self, *values: str) -> CounterChild:
        child = self.children.get(values)
        if child is None:
            self._check(values)
            child = self.children[values] = CounterChild()
        return child


class Gauge(Counter):
    kind = "gauge"

    def set(self, values: tuple[str, ...], value: float) -> None:
        self.labels(*values).value = value

    def clear(self) -> None:
        self.children.clear()


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        super().__init__(name, help, labelnames)
        bounds = tuple(float(b) for b in buckets)
        if not bounds or list(bounds) != sorted(set(bounds)) or math.isinf(bounds[-1]):
            raise ValueError(f"{name}: buckets must be finite, distinct and increasing")
        self.bounds = bounds
        self.children: dict[tuple[str, ...], HistogramChild] = {}

    def labels(self, *values: str) -> HistogramChild:
        child = self.children.get(values)
        if child is None:
            self._check(values)
            child = self.children[values] = HistogramChild(self.bounds)
        return child


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _lines(family: Counter | Histogram) -> Iterator[str]:
    help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
    # A counter's family is named with its ``_total`` suffix, as in the 0.0.4 text format.
    exposed = family.name + "_total" if family.kind == "counter" else family.name
    yield f"# HELP {exposed} {help_text}"
    yield f"# TYPE {exposed} {family.kind}"
    if isinstance(family, Histogram):
        les = [f'le="{_num(b)}"' for b in family.bounds] + ['le="+Inf"']
        for values, h in sorted(family.children.items()):
            total = 0
            for le, count in zip(les, h.counts, strict=True):
                total += count
                yield f"{family.name}_bucket{_labels(family.labelnames, values, le)} {total}"
            yield f"{family.name}_count{_labels(family.labelnames, values)} {total}"
            yield f"{family.name}_sum{_labels(family.labelnames, values)} {_num(h.sum)}"
        return
    suffix = "_total" if family.kind == "counter" else ""
    for values, c in sorted(family.children.items()):
        yield f"{family.name}{suffix}{_labels(family.labelnames, values)} {_num(c.value)}"


def render(families: Sequence[Counter | Histogram]) -> bytes:
    """The text exposition of ``families``, in order, children sorted by label values."""
    out: list[str] = []
    for family in families:
        out.extend(_lines(family))
    out.append("")
    return "\n".join(out).encode()
