"""Two checkouts side by side: the floor and each tree's variants against one nginx, in interleaved rounds.

    git worktree add /tmp/base <commit>
    python bench/compare.py --base /tmp/base                  # this tree against that one
    python bench/compare.py --base /tmp/base --rounds 7 --workloads json --concurrency 64

``run.py`` measures one tree; between two of its runs a busy machine moves CPU ms/request by 2x, so
two runs cannot tell a 20 % change from noise. Here every system is up at once and each round loads
each of them for ``--seconds`` in turn, so a disturbance lands on all of them alike; the table gives the
median CPU ms/request of the rounds (the gateway's process tree, as ``run.py`` counts it), every round's
value, requests per CPU-second against the floor measured in the same rounds, and the medians of the
rounds' p50 and p99 latency. Same pinning, upstream, governance and variants as ``run.py``
(``sobench.systems``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # bench/run.py: the Bench that starts nginx, Redis and the systems
from sobench import systems

THIS = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (its src/ is served)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="load per system per round")
    parser.add_argument("--workloads", default="json,sse")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if not (args.base / "src" / "superollama").is_dir():
        raise SystemExit(f"{args.base} has no src/superollama: give a checkout of this repository")
    trees = {"base": args.base.resolve(), "this": THIS}
    bench = run.Bench(argparse.Namespace(quick=True))
    try:
        ctx, _ = bench.start_upstream()
        bench.start_redis()
        started = [systems.start_floor(ctx)]
        for variant in systems.SUPEROLLAMA_VARIANTS:
            for tree, path in trees.items():
                systems.REPO = path  # the checkout whose src/ the server imports
                running = systems.start_superollama(
                    ctx, dataclasses.replace(variant, name=f"{variant.name}-{tree}")
                )
                running.label = f"{variant.label} ({tree})"
                started.append(running)
        bench.running = started
        live = []
        for running in started:
            print(f"{running.label}: {running.unavailable or 'up'}", flush=True)
            if not running.unavailable:
                live.append(running)
        rounds: dict[tuple[str, str], list[tuple[float, float, float]]] = {}  # CPU ms/req, p50, p99 ms
        for workload in args.workloads.split(","):
            for running in live:
                bench.load(running, workload, args.concurrency, 1.0)  # warm-up
            for _ in range(args.rounds):
                for running in live:
                    assert running.service is not None
                    before = running.service.cpu_s()
                    result = bench.load(running, workload, args.concurrency, args.seconds)
                    spent = running.service.cpu_s() - before
                    if result.requests:
                        rounds.setdefault((running.label, workload), []).append(
                            (1000 * spent / result.requests, result.p50_ms, result.p99_ms)
                        )
            print(f"{workload}: load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    finally:
        bench.close()
    print(f"\nc={args.concurrency}, {args.rounds} rounds of {args.seconds:g} s, base = {trees['base']}")
    print("| system | load | CPU ms/req (median) | rounds | req per CPU-s vs floor | p50 ms | p99 ms |")
    print("|---|---|--:|---|--:|--:|--:|")
    for (label, workload), measured in rounds.items():
        cpu, p50s, p99s = zip(*measured, strict=True)
        floor = rounds.get(("aiohttp floor", workload))
        median = statistics.median(cpu)
        ratio = f"{statistics.median(r[0] for r in floor) / median:.2f}x" if floor else "-"
        each = " ".join(f"{v:.3f}" for v in cpu)
        p50, p99 = statistics.median(p50s), statistics.median(p99s)
        print(f"| {label} | {workload} | {median:.3f} | {each} | {ratio} | {p50:.2f} | {p99:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
