"""Where a gateway's CPU goes, thread by thread: µs of CPU per request for each thread of the floor and of
Super Ollama under the same load, with requests per CPU-second against the floor.

    python bench/threads.py                                   # JSON c=16, floor + ON + OFF, 3 rounds
    python bench/threads.py --workloads json,sse --concurrency 16,64 --seconds 8 --rounds 3
    python bench/threads.py --systems floor,superollama-on

Starts what ``run.py`` starts (nginx on the load CPU, the floor and the Super Ollama variants pinned to
the gateway CPU, a private Redis for the ON variant), then for each point runs wrk and reads every
thread's user + system time (``/proc/PID/task/*/stat`` through psutil) before and after. Threads are named
by ``py-spy dump`` when py-spy is installed (Python threads keep the OS name ``python``), else by id.
The table shows medians over the rounds; a thread that used no CPU in any round is left out.

This is the view the profile cannot give: py-spy samples the GIL holder, so it shows the event loop's
frames but not what the other threads cost the process, nor how often they take the GIL from it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil
import run as harness
from sobench import procs, systems, wrk

DEFAULT_SYSTEMS = "floor,superollama-on,superollama-off"
KNOWN = {  # the threads' target functions, by what they are for
    "_connection_worker_thread": "registry connections (aiosqlite)",
    "_monitor": "log writer (logging.QueueListener)",
    "superollama-telemetry": "telemetry sinks (access log, spans)",
}


@dataclass
class Point:
    """One system at one workload and concurrency: per-thread CPU µs a request, per round."""

    system: str  # the harness's name (``floor``, ``superollama-on``)
    label: str
    requests_per_s: list[float] = field(default_factory=list)
    by_thread: dict[str, list[float]] = field(default_factory=dict)

    def add_round(self, requests_per_s: float, per_thread: dict[str, float]) -> float:
        """One more round's measurements (a thread idle in it counts 0.0); returns ``requests_per_s``."""
        done = len(self.requests_per_s)
        self.requests_per_s.append(requests_per_s)
        for name in set(self.by_thread) | set(per_thread):
            self.by_thread.setdefault(name, [0.0] * done).append(per_thread.get(name, 0.0))
        return requests_per_s

    def total(self, round_: int) -> float:
        return sum(values[round_] for values in self.by_thread.values())  # 0.0 where a thread was idle

    def median_total(self) -> float:
        rounds = len(self.requests_per_s)
        return statistics.median(self.total(i) for i in range(rounds)) if rounds else 0.0


def thread_cpu(pid: int) -> dict[int, float]:
    """Seconds of CPU (user + system) of each thread of ``pid`` so far."""
    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}
    except psutil.NoSuchProcess:
        return {}


def thread_names(pid: int) -> dict[int, str]:
    """Python's names of ``pid``'s threads, from ``py-spy dump`` (empty without py-spy)."""
    if shutil.which("py-spy") is None:
        return {}
    dump = subprocess.run(
        ["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30, check=False
    )
    return {int(tid): name for tid, name in re.findall(r'Thread (\d+) \([^)]*\): "([^"]+)"', dump.stdout)}


def label(names: dict[int, str], tid: int, pid: int) -> str:
    if tid == pid:
        return "main thread (event loop)"
    name = names.get(tid, f"thread {tid}")
    # pool threads are numbered in start order, which differs between runs: one row for all of a kind
    kind = re.sub(r"^Thread-\d+ \((\w+)\)$", r"\1", name)
    return KNOWN.get(kind, kind)


def measure(
    bench: harness.Bench, running: systems.Running, workload: str, conc: int, seconds: float
) -> tuple[float, dict[str, float]]:
    """wrk against ``running`` for ``seconds``: (requests/s, {thread label: CPU µs a request})."""
    assert running.service is not None
    pid = running.service.proc.pid
    target = running.targets[workload]
    body = bench.body_file(running, workload)
    before = thread_cpu(pid)
    result = wrk.run_wrk(
        target.url,
        script=bench.script,
        body_file=body,
        connections=conc,
        duration_s=seconds,
        pin=procs.pin(bench.load_cpu),
        headers=target.headers,
    )
    after = thread_cpu(pid)
    names = thread_names(pid)
    requests = max(1, result.requests)
    per_thread: dict[str, float] = {}
    for tid, cpu in after.items():
        used = cpu - before.get(tid, 0.0)
        if used > 0:
            name = label(names, tid, pid)
            per_thread[name] = per_thread.get(name, 0.0) + used * 1e6 / requests
    return result.requests / result.duration_s, per_thread


def render(points: dict[tuple[str, int], list[Point]]) -> str:
    lines = []
    for (workload, conc), row in points.items():
        floor = next((p for p in row if p.system == "floor"), None)
        floor_total = floor.median_total() if floor else None
        lines.append(f"\n### {workload} c={conc} (medians; CPU µs a request)\n")
        lines.append("| system | req/s | thread | µs/req |")
        lines.append("|---|--:|---|--:|")
        for point in row:
            system = point.label
            rps = statistics.median(point.requests_per_s)
            threads = sorted(point.by_thread.items(), key=lambda kv: -statistics.median(kv[1]))
            for name, values in threads:
                lines.append(f"| {system} | {rps:,.0f} | {name} | {statistics.median(values):.1f} |")
            total = point.median_total()
            ratio = ""
            if floor_total and total and point is not floor:
                ratio = f" ({floor_total / total:.2f}x the floor per CPU-second)"
            lines.append(f"| {system} | {rps:,.0f} | **all threads**{ratio} | **{total:.1f}** |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"default {DEFAULT_SYSTEMS}")
    ap.add_argument("--workloads", default="json", help="of json, sse, emb (default json)")
    ap.add_argument("--concurrency", default="16", help="comma-separated (default 16)")
    ap.add_argument("--seconds", type=float, default=8.0, help="per point (default 8)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians (default 3)")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    bench = harness.Bench(harness.parse_args(["--systems", args.systems, "--no-readme"]))
    points: dict[tuple[str, int], list[Point]] = {}
    try:
        bench.start(names)
        live = [r for r in bench.running if not r.unavailable and r.service is not None]
        for workload in args.workloads.split(","):
            for conc in (int(c) for c in args.concurrency.split(",")):
                serving = [r for r in live if workload in r.targets]
                row = points[(workload, conc)] = [Point(r.name, r.label) for r in serving]
                for round_ in range(args.rounds):
                    for running, point in zip(serving, row, strict=True):
                        rps = point.add_round(*measure(bench, running, workload, conc, args.seconds))
                        harness.log(
                            f"{running.label} {workload} c={conc} round {round_ + 1}: {rps:,.0f} req/s"
                        )
    finally:
        bench.close()
    print(render(points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
