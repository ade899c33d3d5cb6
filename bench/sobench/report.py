"""The table: medians per point, latency added over direct, ratios, markdown, README update. Pure."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .wrk import WrkResult

__all__ = [
    "README_END",
    "README_START",
    "PairRow",
    "Point",
    "added_latency",
    "on_off_pairs",
    "pair_rows",
    "ratio",
    "ratio_rows",
    "render_markdown",
    "replace_section",
    "summarize",
]

BASELINE = "direct"
README_START = "<!-- bench:results:start -->"
README_END = "<!-- bench:results:end -->"
RATIO_POINTS = (("json", 16), ("json", 64), ("sse", 16), ("sse", 64))


@dataclass(frozen=True)
class Point:
    """One (system, workload, concurrency): medians over the repeats."""

    system: str
    workload: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    repeats: int
    spread: float  # (max - min) / median of req/s over the repeats; 0 for one run
    cpu_ms: float | None = None  # the system's CPU time per request (median), when measured

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    system: str,
    workload: str,
    concurrency: int,
    runs: Sequence[WrkResult],
    cpu_s: Sequence[float] | None = None,
) -> Point:
    """Medians over ``runs``; ``cpu_s``, when given, is the system's CPU seconds during each run."""
    if not runs:
        raise ValueError("no runs to summarize")
    rps = [r.rps for r in runs]
    mid = statistics.median(rps)
    timed = [r for r in runs if r.requests > 0] or list(runs)  # a run with no answer has no latency
    return Point(
        system=system,
        workload=workload,
        concurrency=concurrency,
        rps=mid,
        p50_ms=statistics.median(r.p50_ms for r in timed),
        p99_ms=statistics.median(r.p99_ms for r in timed),
        errors=sum(r.error_count for r in runs),
        requests=sum(r.requests for r in runs),
        repeats=len(runs),
        spread=(max(rps) - min(rps)) / mid if mid > 0 else 0.0,
        cpu_ms=_cpu_ms(runs, cpu_s),
    )


def _cpu_ms(runs: Sequence[WrkResult], cpu_s: Sequence[float] | None) -> float | None:
    if not cpu_s or len(cpu_s) != len(runs):
        return None
    per = [1000 * cpu / r.requests for r, cpu in zip(runs, cpu_s, strict=True) if r.requests > 0]
    return statistics.median(per) if per else None


def _index(points: Iterable[Point]) -> dict[tuple[str, str, int], Point]:
    return {(p.system, p.workload, p.concurrency): p for p in points}


def added_latency(
    points: Sequence[Point], baseline: str = BASELINE
) -> dict[tuple[str, str, int], tuple[float, float]]:
    """(p50, p99) in ms over the baseline at the same workload and concurrency, for every other point."""
    index = _index(points)
    added = {}
    for p in points:
        base = index.get((baseline, p.workload, p.concurrency))
        if base is not None and p.system != baseline:
            added[(p.system, p.workload, p.concurrency)] = (p.p50_ms - base.p50_ms, p.p99_ms - base.p99_ms)
    return added


def ratio(
    points: Sequence[Point],
    numerator: str,
    denominator: str,
    workload: str,
    concurrency: int,
    *,
    by: str = "rps",
) -> float | None:
    """``numerator`` over ``denominator`` at one point, None when either side is missing or zero.

    ``by="rps"``: req/s over req/s. ``by="cpu"``: requests per CPU-second over requests per CPU-second
    (the inverse ratio of CPU ms per request), what req/s would be with a whole core each.
    """
    index = _index(points)
    num = index.get((numerator, workload, concurrency))
    den = index.get((denominator, workload, concurrency))
    if num is None or den is None:
        return None
    if by == "cpu":
        if not num.cpu_ms or not den.cpu_ms:
            return None
        return den.cpu_ms / num.cpu_ms
    if den.rps <= 0:
        return None
    return num.rps / den.rps


def ratio_rows(
    points: Sequence[Point], numerators: Sequence[str], denominators: Sequence[str], *, by: str = "rps"
) -> list[tuple[str, str, list[float | None]]]:
    """(numerator, denominator, [ratio at each of RATIO_POINTS]) for every pair."""
    return [
        (num, den, [ratio(points, num, den, w, c, by=by) for w, c in RATIO_POINTS])
        for num in numerators
        for den in denominators
    ]


@dataclass(frozen=True)
class PairRow:
    """One (workload, concurrency) of a variant pair, e.g. all ON against all OFF: what ON costs more."""

    workload: str
    concurrency: int
    rps_ratio: float | None  # ON req/s over OFF req/s
    cpu_ratio: float | None  # ON CPU ms/request over OFF's (>1: ON costs more)
    cpu_ms_added: float | None  # ON CPU ms/request minus OFF's
    p50_added: float  # ON p50 minus OFF p50, ms
    p99_added: float


def on_off_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """(X-on, X-off) for every X with both among ``names``, in their order."""
    return [
        (n, n.removesuffix("-on") + "-off") for n in names if n.endswith("-on") and n[:-3] + "-off" in names
    ]


def pair_rows(points: Sequence[Point], on: str, off: str) -> list[PairRow]:
    """ON against OFF at every point both have, in ON's order."""
    index = _index(points)
    rows = []
    for p in points:
        if p.system != on or (q := index.get((off, p.workload, p.concurrency))) is None:
            continue
        cpu_ratio = cpu_added = None
        if p.cpu_ms is not None and q.cpu_ms is not None:
            cpu_added = p.cpu_ms - q.cpu_ms
            cpu_ratio = p.cpu_ms / q.cpu_ms if q.cpu_ms > 0 else None
        rps_ratio = p.rps / q.rps if q.rps > 0 else None
        rows.append(
            PairRow(
                p.workload,
                p.concurrency,
                rps_ratio,
                cpu_ratio,
                cpu_added,
                p.p50_ms - q.p50_ms,
                p.p99_ms - q.p99_ms,
            )
        )
    return rows


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _signed_3(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """The whole result as markdown: header, main table, per-system table, ratio table."""
    machine = report["machine"]
    systems: list[Mapping[str, Any]] = report["systems"]
    points = [Point(**p) for p in report["points"]]
    labels = {s["name"]: s["label"] for s in systems}
    added = added_latency(points)
    lines = [
        f"**{report['date']}** — {machine['nproc']} CPUs, {machine['cpu_model']}, "
        f"Python {machine['python']}, Super Ollama {machine.get('revision', '?')}; "
        f"{report['mode']}.",
        "",
        f"Pinning: {report['pinning']}",
        "",
        "| system | load | c | req/s | p50 ms | p99 ms | +p50 ms | +p99 ms | CPU ms/req | spread | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in systems:
        if s.get("unavailable"):
            why = " ".join(str(s["unavailable"]).replace("|", "/").split())
            lines.append(f"| {s['label']} | - | - | {why} | | | | | | | |")
            continue
        for p in (p for p in points if p.system == s["name"]):
            a50, a99 = added.get((p.system, p.workload, p.concurrency), (None, None))
            if p.requests == 0:  # nothing finished within the run: no latency to show
                head = f"| {labels[p.system]} | {p.workload} | {p.concurrency}"
                lines.append(f"{head} | 0 | - | - | - | - | - | - | {p.errors} |")
                continue
            lines.append(
                f"| {labels[p.system]} | {p.workload} | {p.concurrency} | {_num(p.rps)} | "
                f"{p.p50_ms:.2f} | {p.p99_ms:.2f} | {_signed(a50)} | {_signed(a99)} | "
                f"{_num(p.cpu_ms, '{:.3f}')} | {p.spread:.0%} | {p.errors} |"
            )
    lines += [
        "",
        "| system | start → first 200 on /v1/models | RSS idle MB | RSS after MB | notes |",
        "|---|--:|--:|--:|---|",
    ]
    for s in systems:
        start = s.get("start_s")
        lines.append(
            f"| {s['label']} | {_num(start, '{:.2f} s')} | {_num(s.get('rss_idle_mb'), '{:.0f}')} | "
            f"{_num(s.get('rss_after_mb'), '{:.0f}')} | {'; '.join(s.get('notes') or [])} |"
        )
    numerators = [s["name"] for s in systems if s["name"].startswith("superollama")]
    if numerators:
        head = " | ".join(f"{w} c={c}" for w, c in RATIO_POINTS)
        lines += ["", f"| ratio | {head} |", "|---|" + "--:|" * len(RATIO_POINTS)]
        for by, unit in (("rps", "req/s"), ("cpu", "req per CPU-second")):
            for num, den, values in ratio_rows(points, numerators, ["litellm", "floor", "bare"], by=by):
                cells = " | ".join(_num(v, "{:.2f}x") for v in values)
                lines.append(f"| {labels.get(num, num)} / {labels.get(den, den)}, {unit} | {cells} |")
    for on, off in on_off_pairs([s["name"] for s in systems if not s.get("unavailable")]):
        rows = pair_rows(points, on, off)
        if not rows:
            continue
        title = f"{labels.get(on, on)} vs {labels.get(off, off)}"
        lines += [
            "",
            f"| {title} | load | c | req/s ratio | CPU ms/req ratio | + CPU ms/req | + p50 ms | + p99 ms |",
            "|---|---|--:|--:|--:|--:|--:|--:|",
        ]
        for r in rows:
            lines.append(
                f"| | {r.workload} | {r.concurrency} | {_num(r.rps_ratio, '{:.2f}x')} | "
                f"{_num(r.cpu_ratio, '{:.2f}x')} | {_signed_3(r.cpu_ms_added)} | {_signed(r.p50_added)} | "
                f"{_signed(r.p99_added)} |"
            )
    if report.get("noise"):
        lines += ["", f"Noise: {report['noise']}"]
    return "\n".join(lines) + "\n"


def replace_section(text: str, body: str, start: str = README_START, end: str = README_END) -> str:
    """``text`` with what lies between the markers replaced by ``body`` (markers appended if absent)."""
    block = f"{start}\n{body.rstrip()}\n{end}"
    i, j = text.find(start), text.find(end)
    if i == -1 or j == -1 or j < i:
        return text.rstrip() + "\n\n" + block + "\n"
    return text[:i] + block + text[j + len(end) :]
