"""Benchmark Super Ollama against direct nginx, an aiohttp pass-through floor and the LiteLLM proxy.

    python bench/run.py              # full: 10 s per point, median of 3 rounds (~16 min)
    python bench/run.py --quick      # 3 s per point, one round (~3 min)
    python bench/run.py --soak       # 1,000,000 requests at c=16 against Super Ollama, RSS every 100k
    python bench/run.py --soak 100000 --soak-every 10000
    python bench/run.py --render bench/results/STAMP.json   # re-render a saved result

Prints one table, writes bench/results/<stamp>.json and .md, and puts the table in bench/README.md.
Everything it starts (nginx, the gateways, wrk, py-spy) it stops, also on Ctrl-C. Loopback only.
See bench/README.md for what is measured and how it is pinned.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sobench import procs, profile, report, systems, upstream, wrk

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
README = BENCH_DIR / "README.md"
SOAK_START = "<!-- bench:soak:start -->"
SOAK_END = "<!-- bench:soak:end -->"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s per point, 1 s warm-up, one round")
    ap.add_argument("--duration", type=float, help="seconds per point (default 10; --quick 3)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds before each point (default 2; --quick 1)")
    ap.add_argument("--repeat", type=int, help="rounds; the table shows medians (default 3; --quick 1)")
    ap.add_argument("--concurrency", default="1,16,64", help="comma-separated (default 1,16,64)")
    ap.add_argument("--workloads", default="json,sse", help="of json, sse, emb (default json,sse)")
    ap.add_argument(
        "--systems",
        default="direct,floor,bare,litellm,superollama",
        help="of direct, floor, bare, floor-h1, litellm, superollama (every variant in sobench/systems.py) "
        "or one variant "
        f"({', '.join(v.name for v in systems.SUPEROLLAMA_VARIANTS)})",
    )
    ap.add_argument(
        "--profile", type=float, default=0, metavar="S", help="then py-spy the floor and Super Ollama (S s)"
    )
    ap.add_argument("--soak", type=int, nargs="?", const=1_000_000, metavar="N", help="soak N requests")
    ap.add_argument("--soak-every", type=int, default=100_000, metavar="N", help="RSS sample interval")
    ap.add_argument(
        "--soak-system", default="superollama-on", help="system or variant to soak (default superollama-on)"
    )
    ap.add_argument("--no-readme", action="store_true", help="don't update bench/README.md")
    ap.add_argument("--render", type=Path, metavar="JSON", help="only re-render a saved result (and README)")
    args = ap.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.workloads) - set(systems.WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads {sorted(unknown)}")
    return args


def machine_info() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rev = subprocess.run(
        ["git", "-C", str(BENCH_DIR.parent), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return "?"
        return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "revision": rev or "?",
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "--version"]),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def choose_cpus() -> tuple[int | None, int | None, str]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not shutil.which("taskset"):
        return None, None, "none (fewer than 2 CPUs or no taskset): every process shares every CPU"
    gw, load = cpus[0], cpus[1]
    text = (
        f"each gateway (floor, LiteLLM, Super Ollama) alone on CPU {gw} (`taskset -c {gw}`); "
        f"wrk (1 thread), nginx (1 worker) and the harness on CPU {load}."
    )
    return gw, load, text


class Bench:
    """Holds everything started, so that ``close()`` can stop it all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="sobench-"))
        self.gw_cpu, self.load_cpu, self.pinning = choose_cpus()
        self.running: list[systems.Running] = []
        self.nginx: procs.Service | None = None
        self.redis: procs.Service | None = None
        self.script = wrk.write_script(self.tmp)

    def close(self) -> None:
        """Stop everything started; a second Ctrl-C doesn't cut this short (each stop has a timeout)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for running in reversed(self.running):
            try:
                running.stop()
            except Exception as exc:
                log(f"stopping {running.name}: {exc}")
        if self.nginx is not None:
            self.nginx.stop()
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start_upstream(self) -> tuple[systems.Context, float]:
        nginx_bin = upstream.ensure_tools()
        port = procs.free_port()
        (self.tmp / "nginx.conf").write_text(upstream.nginx_config(self.tmp, port))
        cmd = [*procs.pin(self.load_cpu), nginx_bin, "-p", str(self.tmp), "-c", str(self.tmp / "nginx.conf")]
        self.nginx = procs.Service("nginx", cmd, log_dir=self.tmp)
        url = f"http://{procs.HOST}:{port}/v1/models"
        start_s = procs.wait_ok(url, self.nginx.started, 30, self.nginx.proc)
        return systems.Context(self.tmp, port, self.gw_cpu, self.load_cpu), start_s

    def start_redis(self) -> None:
        """A private redis-server on the load CPU for the all-ON variant's rate limits (unless
        ``SOBENCH_REDIS_URL`` names one): a shared, unpinned Redis would run on the gateway's CPU now and
        then, and its time would show up as the gateway's."""
        if os.environ.get("SOBENCH_REDIS_URL") or not shutil.which("redis-server"):
            return
        port = procs.free_port()
        cmd = [*procs.pin(self.load_cpu), "redis-server", "--port", str(port), "--bind", procs.HOST]
        self.redis = procs.Service("redis", [*cmd, "--save", "", "--appendonly", "no"], log_dir=self.tmp)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((procs.HOST, port), timeout=0.5):
                break
            time.sleep(0.05)
        url = f"redis://{procs.HOST}:{port}/0"
        systems.SUPEROLLAMA_ON.env["SUPEROLLAMA_REDIS_URL"] = url
        log(f"redis: private redis-server on {url}, pinned with the load generator")

    def start(self, names: list[str]) -> None:
        ctx, nginx_start = self.start_upstream()
        if any(name.startswith("superollama") for name in names):
            self.start_redis()
        variants = {v.name: v for v in systems.SUPEROLLAMA_VARIANTS}
        for name in names:
            if name == "direct":
                started = [systems.start_direct(ctx, self.nginx, nginx_start)]  # type: ignore[arg-type]
            elif name == "floor":
                started = [systems.start_floor(ctx)]
            elif name == "bare":
                started = [systems.start_bare(ctx)]
            elif name == "floor-h1":
                started = [systems.start_bare(ctx, server="aiohttp")]
            elif name == "litellm":
                started = [systems.start_litellm(ctx, log)]
            elif name == "superollama":
                started = [systems.start_superollama(ctx, v) for v in systems.SUPEROLLAMA_VARIANTS]
            elif name in variants:
                started = [systems.start_superollama(ctx, variants[name])]
            else:
                raise SystemExit(f"unknown system {name!r}")
            for running in started:
                self.running.append(running)
                state = running.unavailable or f"up in {running.start_s:.2f} s, {running.rss_idle_mb:.0f} MB"
                log(f"{running.label}: {state}")
                if not running.unavailable:
                    self.check(running)
                    for note in systems.governance_notes(running):
                        running.notes.append(note)
                        log(f"{running.label}: {note}")
                    note = self.idle_cpu(running)
                    running.notes.append(note)
                    log(f"{running.label}: {note}")

    def idle_cpu(self, running: systems.Running, seconds: float = 2.0) -> str:
        """CPU the system burns with no request (timers, pollers): a fixed cost per second that CPU
        ms/request divides by the request count, so it weighs more the fewer requests a run gets through."""
        before = self.cpu_s(running)
        time.sleep(seconds)
        return f"idle CPU {(self.cpu_s(running) - before) * 1000 / seconds:.0f} ms/s"

    def check(self, running: systems.Running) -> None:
        """One request per workload before measuring: a 200 with the body we expect, or the workload goes."""
        for workload, target in list(running.targets.items()):
            try:
                status, raw, _ = procs.http_json("POST", target.url, target.body, 30, target.headers)
            except OSError as exc:
                status, raw = 0, str(exc).encode()
            ok = status == 200 and (b"[DONE]" in raw if workload == "sse" else b'"usage"' in raw)
            if not ok:
                del running.targets[workload]
                running.notes.append(f"{workload} skipped: sanity request got {status} {raw[:160]!r}")
                log(f"{running.label} {workload}: sanity request failed: {status} {raw[:300]!r}")

    def body_file(self, running: systems.Running, workload: str) -> Path:
        path = self.tmp / f"body-{running.name}-{workload}.json"
        if not path.exists():
            path.write_text(json.dumps(running.targets[workload].body))
        return path

    def load(
        self, running: systems.Running, workload: str, connections: int, seconds: float, stop_after: int = 0
    ) -> wrk.WrkResult:
        target = running.targets[workload]
        return wrk.run_wrk(
            target.url,
            script=self.script,
            body_file=self.body_file(running, workload),
            connections=connections,
            duration_s=seconds,
            pin=procs.pin(self.load_cpu),
            stop_after=stop_after,
            headers=target.headers,
        )

    def measure(self) -> list[report.Point]:
        args = self.args
        live = [r for r in self.running if not r.unavailable]
        runs: dict[tuple[str, str, int], list[wrk.WrkResult]] = {}
        cpu: dict[tuple[str, str, int], list[float]] = {}
        # Point by point, every system in turn (the order rotated each round): the systems a ratio compares
        # are measured within a minute of each other, not minutes apart, so that the machine's drift (its
        # neighbours, its clock) lands on both sides of the ratio.
        for rnd in range(args.repeat):
            turn = live[rnd % len(live) :] + live[: rnd % len(live)] if live else []
            for workload, c, running in (
                (w, c, r) for w in args.workloads for c in args.concurrency for r in turn if w in r.targets
            ):
                try:
                    if args.warmup > 0:
                        self.load(running, workload, c, args.warmup)
                    before = self.cpu_s(running)
                    result = self.load(running, workload, c, args.duration)
                except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:
                    running.notes.append(f"{workload} c={c} round {rnd + 1} failed: {exc}"[:200])
                    log(f"{running.label} {workload} c={c}: {exc}")
                    continue
                runs.setdefault((running.name, workload, c), []).append(result)
                cpu.setdefault((running.name, workload, c), []).append(self.cpu_s(running) - before)
                log(
                    f"[{rnd + 1}/{args.repeat}] {running.label:32} {workload:4} c={c:<3} "
                    f"{result.rps:>9,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                    f"p99 {result.p99_ms:7.2f} ms  errors {result.error_count}"
                )
        for running in live:
            running.rss_after_mb = running.service.rss_mb() if running.service else self.nginx_rss()
            running.notes += systems.ledger_and_log_notes(running)
        return [report.summarize(s, w, c, rs, cpu[(s, w, c)]) for (s, w, c), rs in runs.items()]

    def cpu_s(self, running: systems.Running) -> float:
        service = running.service or self.nginx
        return service.cpu_s() if service else 0.0

    def nginx_rss(self) -> float | None:
        return self.nginx.rss_mb() if self.nginx else None

    def profile(self, seconds: float) -> list[str]:
        """py-spy the floor and each Super Ollama variant under c=16 JSON and SSE (the floor's profile is
        the baseline of the others'); the top frames as text lines."""
        lines = []
        for running in self.running:
            profiled = running.name == "floor" or running.name.startswith("superollama")
            if not profiled or running.unavailable or not running.service:
                continue
            for workload in ("json", "sse"):
                if workload not in running.targets or workload not in self.args.workloads:
                    continue
                RESULTS.mkdir(exist_ok=True)
                out = RESULTS / f"profile-{running.name}-{workload}.txt"
                spy = profile.record(running.service.pid, out, round(seconds), procs.pin(self.load_cpu))
                if spy is None:
                    return ["py-spy is not installed (pip install py-spy): no profile"]
                try:
                    time.sleep(0.5)
                    result = self.load(running, workload, 16, seconds)
                    spy.wait(seconds + 30)
                finally:
                    if spy.poll() is None:
                        spy.terminate()
                        spy.wait(10)
                prof = profile.summarize_stacks(out.read_text() if out.exists() else "")
                total = max(prof.samples, 1)
                lines.append(f"### {running.label}, {workload} c=16 ({result.rps:,.0f} req/s under py-spy)")
                lines.append(
                    f"{prof.samples} samples of the GIL holder; collapsed stacks in "
                    f"{out.relative_to(BENCH_DIR.parent)}"
                )
                for title, rows in (
                    ("own time by package:", prof.packages),
                    ("own time by frame:", prof.own),
                    ("Super Ollama's frames, inclusive:", prof.ours),
                    (
                        "by the deepest Super Ollama frame (its own time and the library calls it makes):",
                        prof.nearest,
                    ),
                ):
                    lines.append(title)
                    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in rows]
        return lines


def write_results(stamp: str, name: str, data: dict[str, Any], markdown: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stamp}{name}.json").write_text(json.dumps(data, indent=2))
    path = RESULTS / f"{stamp}{name}.md"
    path.write_text(markdown)
    return path


def run_bench(bench: Bench, args: argparse.Namespace) -> int:
    machine = machine_info()
    bench.start(args.systems)
    points = bench.measure()
    profile_lines = bench.profile(args.profile) if args.profile > 0 else []
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    spreads = [p.spread for p in points if p.repeats > 1]
    noise = f"load average {machine['loadavg_before']} before, {machine['loadavg_after']} after; " + (
        f"req/s spread over {args.repeat} rounds: median {sorted(spreads)[len(spreads) // 2]:.0%}, "
        f"max {max(spreads):.0%}"
        if spreads
        else "one round, no spread"
    )
    now = datetime.now(UTC)
    mode = (
        f"{args.duration:g} s per point after {args.warmup:g} s warm-up, "
        f"{'median of ' + str(args.repeat) + ' rounds' if args.repeat > 1 else 'one round'}"
        f"{' (--quick)' if args.quick else ''}"
    )
    data: dict[str, Any] = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "mode": mode,
        "pinning": bench.pinning,
        "args": {k: v for k, v in vars(args).items()},
        "systems": [
            {
                "name": r.name,
                "label": r.label,
                "start_s": r.start_s,
                "rss_idle_mb": r.rss_idle_mb,
                "rss_after_mb": r.rss_after_mb,
                "unavailable": r.unavailable,
                "notes": r.notes,
            }
            for r in bench.running
        ],
        "points": [p.as_dict() for p in points],
        "noise": noise,
        "profile": profile_lines,
    }
    markdown = report.render_markdown(data)
    print(markdown, flush=True)
    if profile_lines:
        print("\n".join(profile_lines), flush=True)
    path = write_results(now.strftime("%Y%m%d-%H%M%S"), "", data, markdown)
    log(f"wrote {path} and .json")
    if not args.no_readme:
        README.write_text(report.replace_section(README.read_text(), markdown))
        log(f"updated {README}")
    return 0


def run_soak(bench: Bench, args: argparse.Namespace) -> int:
    machine = machine_info()
    bench.start(["direct" if args.soak_system == "direct" else args.soak_system])
    running = next((r for r in bench.running if not r.unavailable and "json" in r.targets), None)
    if running is None:
        reasons = "; ".join(f"{r.label}: {r.unavailable}" for r in bench.running)
        log(f"soak: nothing to soak ({reasons})")
        return 1
    rss = running.service.rss_mb if running.service else bench.nginx_rss

    bench.load(running, "json", 16, max(args.warmup, 2))
    samples: list[dict[str, Any]] = [
        {"requests": 0, "rss_mb": rss(), "rps": None, "p99_ms": None, "errors": 0}
    ]
    log(f"soak {running.label}: {args.soak:,} requests at c=16, RSS every {args.soak_every:,}")
    done = 0
    while done < args.soak:
        batch = min(args.soak_every, args.soak - done)
        result = bench.load(running, "json", 16, 3600, stop_after=batch)
        done += result.requests
        sample = {
            "requests": done,
            "rss_mb": rss(),
            "rps": result.rps,
            "p99_ms": result.p99_ms,
            "errors": result.error_count,
        }
        samples.append(sample)
        log(f"  {done:>10,} requests  RSS {sample['rss_mb']:7.1f} MB  {result.rps:8,.0f} req/s")
    first = samples[1]["rss_mb"] if len(samples) > 1 else samples[0]["rss_mb"]
    growth = (samples[-1]["rss_mb"] - first) / first if first else 0.0
    now = datetime.now(UTC)
    lines = [
        f"**{now:%Y-%m-%d %H:%M UTC}** — soak of {running.label}: {done:,} requests (JSON, c=16), "
        f"{machine['nproc']} CPUs, {machine['cpu_model']}, Super Ollama {machine['revision']}. "
        f"RSS after warm-up {samples[0]['rss_mb']:.1f} MB; growth after the first sample: {growth:+.1%}.",
        "",
        "| requests | RSS MB | req/s | p99 ms | errors |",
        "|--:|--:|--:|--:|--:|",
    ]
    for s in samples:
        rps = "-" if s["rps"] is None else f"{s['rps']:,.0f}"
        p99 = "-" if s["p99_ms"] is None else f"{s['p99_ms']:.2f}"
        lines.append(f"| {s['requests']:,} | {s['rss_mb']:.1f} | {rps} | {p99} | {s['errors']} |")
    markdown = "\n".join(lines) + "\n"
    print(markdown, flush=True)
    data: dict[str, Any] = {"date": f"{now:%Y-%m-%d %H:%M UTC}", "machine": machine, "system": running.label}
    data |= {"samples": samples, "growth": growth}
    path = write_results(now.strftime("%Y%m%d-%H%M%S"), "-soak", data, markdown)
    log(f"wrote {path} and .json")
    if not args.no_readme:
        README.write_text(report.replace_section(README.read_text(), markdown, SOAK_START, SOAK_END))
    return 0


def render_saved(path: Path, update_readme: bool) -> int:
    """Print (and put in the README) the table of a result saved by an earlier run."""
    data = json.loads(path.read_text())
    markdown = report.render_markdown(data)
    print(markdown + "\n".join(data.get("profile") or []), flush=True)
    if update_readme:
        README.write_text(report.replace_section(README.read_text(), markdown))
        log(f"updated {README}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_saved(args.render, not args.no_readme)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell that starts the harness in the background makes it ignore SIGINT
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    bench = Bench(args)
    if bench.load_cpu is not None:
        os.sched_setaffinity(0, {bench.load_cpu})
    try:
        return run_soak(bench, args) if args.soak else run_bench(bench, args)
    except RuntimeError as exc:  # what the harness needs is missing (nginx, wrk, root)
        log(f"bench: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    finally:
        bench.close()


if __name__ == "__main__":
    sys.exit(main())
