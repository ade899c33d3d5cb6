"""Merge the Prometheus text expositions of several worker processes into one, as if one process.

Every series (one line: name, labels, value) that appears in several expositions is summed: counters,
histogram buckets, ``_count`` and ``_sum``, and our gauges (requests in flight, queue depth, instances by
state), which are all summable across processes. Families keep the order of the first exposition; a series
only some workers have is added to its family after the others, its lines in their order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["merge_expositions"]


class _Family:
    __slots__ = ("meta", "series")

    def __init__(self) -> None:
        self.meta: list[str] = []  # the "# HELP" and "# TYPE" lines
        self.series: dict[str, tuple[float, bool]] = {}  # series → (sum, every value an integer)


def merge_expositions(texts: Iterable[bytes]) -> bytes:
    families: dict[str, _Family] = {}
    for text in texts:
        family: _Family | None = None
        for line in text.decode("utf-8", "replace").splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = families.setdefault(parts[2], _Family())
                    if len(family.meta) < 2 and line not in family.meta:
                        family.meta.append(line)
                continue
            series, _, value = line.rpartition(" ")
            if family is None:  # a sample before any HELP/TYPE: a family of its own
                family = families.setdefault(series.split("{", 1)[0], _Family())
            number, integral = _parse(value)
            total, all_integral = family.series.get(series, (0.0, True))
            family.series[series] = (total + number, all_integral and integral)
    out: list[str] = []
    for family in families.values():
        out.extend(family.meta)
        out.extend(
            f"{series} {_format(total, integral)}" for series, (total, integral) in family.series.items()
        )
    out.append("")
    return "\n".join(out).encode()


def _parse(value: str) -> tuple[float, bool]:
    try:
        return float(int(value)), True
    except ValueError:
        pass
    if value in ("+Inf", "Inf"):
        return float("inf"), False
    if value == "-Inf":
        return float("-inf"), False
    try:
        return float(value), False
    except ValueError:
        return float("nan"), False


def _format(total: float, integral: bool) -> str:
    if integral:
        return str(int(total))
    if math.isnan(total):
        return "NaN"
    if total in (float("inf"), float("-inf")):
        return "+Inf" if total > 0 else "-Inf"
    return repr(total)
