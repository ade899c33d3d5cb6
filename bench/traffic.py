"""Traffic management on the hot path: deployments + per-target windows vs plain routing, and shadow
traffic at 0 %, 5 % and 100 % — the client's latency in each case.

    python bench/traffic.py            # 8 s per point after 2 s warm-up, 3 rounds, c=8
    python bench/traffic.py --quick    # 3 s per point after 1 s warm-up, 1 round

It starts a fake OpenAI upstream (aiohttp, a child process: a fixed chat answer after ``--delay`` ms,
under ``/v1`` and ``/s/v1``) and ``superollama serve`` from this checkout (a temporary home, no bundled
model, metrics off, log level WARNING), connects the upstream twice (``a`` and ``b``: ``a/bench`` and
``b/bench``), then deploys:

- ``plain``: no deployment, clients name the connection's model ``a/bench`` (today's one-target route);
- ``split``: ``a/bench=90 b/bench=10`` sticky by ``user`` (weighted pick, stickiness, and every answer
  recorded in the per-target window, reported to the registry every 2 s);
- ``shadow-0`` / ``shadow-5`` / ``shadow-100``: ``a/bench=100`` with ``b/bench`` as shadow at 0, 5 and
  100 % (each copy queued, sent by the gateway's shadow workers and compared, off the client's path).

Each point: ``--concurrency`` aiohttp clients in this process, keep-alive, sending 4-token chats for
``--duration`` seconds after ``--warmup``; rounds interleave the scenarios (ABCDE ABCDE …) so drift on
a shared machine spreads over all of them. Reports req/s, p50 and p99 (medians over rounds), and for
the shadow runs the copies compared and dropped. Writes ``bench/results/traffic-STAMP.json``. Every
process it starts it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (http://\S+)")
SCENARIOS = ("plain", "split", "shadow-0", "shadow-5", "shadow-100")

UPSTREAM = r"""
import asyncio, sys
from aiohttp import web
delay = float(sys.argv[1]) / 1000
body = {"id": "c", "object": "chat.completion", "created": 1, "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, friend"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
async def models(request): return web.json_response({"object": "list", "data": [{"id": "bench"}]})
async def chat(request):
    await request.read()
    if delay: await asyncio.sleep(delay)
    return web.json_response(body)
app = web.Application()
for p in ("", "/s"):
    app.router.add_get(p + "/v1/models", models)
    app.router.add_post(p + "/v1/chat/completions", chat)
async def main():
    runner = web.AppRunner(app, access_log=None); await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0); await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def start_upstream(delay_ms: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM, str(delay_ms)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def start_gateway(home: Path) -> tuple[subprocess.Popen[str], str, dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "SUPEROLLAMA_HOME": str(home)}
    env |= {"SUPEROLLAMA_PORT": "0", "SUPEROLLAMA_WORKERS": "1", "SUPEROLLAMA_BUNDLED_MODEL": "false"}
    env |= {"SUPEROLLAMA_METRICS": "false", "SUPEROLLAMA_LOG_LEVEL": "WARNING"}
    env.pop("SUPEROLLAMA_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "superollama.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=(home / "serve.log").open("a"),
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if match := _LISTENING.search(line):
            return proc, match.group(1), env
        if not line:
            break
    proc.kill()
    raise SystemExit(f"serve did not start; see {home / 'serve.log'}")


def cli(env: dict[str, str], url: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "superollama.cli", *args],
        env={**env, "SUPEROLLAMA_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"superollama {' '.join(args)}: {done.stderr}")


def prepare(env: dict[str, str], url: str, port: int) -> None:
    cli(env, url, "connect", "openai", f"http://127.0.0.1:{port}", "--name", "a")
    cli(env, url, "connect", "openai", f"http://127.0.0.1:{port}/s", "--name", "b")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ids = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
        if {"a/bench", "b/bench"} <= set(ids):
            break
        time.sleep(0.2)
    cli(env, url, "deploy", "split", "--target", "a/bench=90", "--target", "b/bench=10", "--sticky", "user")
    for percent in (0, 5, 100):
        name = f"shadow-{percent}"
        cli(env, url, "deploy", name, "--target", "a/bench=100")
        if percent:
            cli(env, url, "shadow", name, "--to", "b/bench", "--percent", str(percent))


def model_of(scenario: str) -> str:
    return "a/bench" if scenario == "plain" else scenario


async def load(url: str, model: str, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        body = json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
                "user": f"u{i}",
            }
        )
        headers = {"Content-Type": "application/json"}
        while (t0 := loop.time()) < stop_at:
            async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
                await r.read()
                ok = r.status == 200
            if t0 >= measure_from:
                if ok:
                    latencies.append(loop.time() - t0)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(i, session) for i in range(concurrency)))
    latencies.sort()
    n = len(latencies)
    return {
        "rps": n / duration,
        "p50_ms": 1000 * latencies[n // 2] if n else None,
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else None,
        "errors": errors,
    }


def shadow_state(url: str, name: str) -> dict[str, Any]:
    out = httpx.get(f"{url}/admin/v1/deployments/{name}/shadow", timeout=30)
    return out.json() if out.status_code == 200 else {}


def micro(n: int = 200_000) -> dict[str, float]:
    """The hot path's own CPU per request, in this process (no network, no noise from other processes):
    plain lookup vs deployment pick (weighted, sticky by user), the window record, the shadow draw."""
    import timeit

    sys.path.insert(0, str(ROOT / "src"))
    from superollama.core.routing import Deployment, DeploymentTarget, Route, RouteTarget, RoutingTable
    from superollama.core.types import Endpoint, RequestRecord
    from superollama.gateway.shadow import ShadowMirror
    from superollama.telemetry.windows import TargetWindows

    ep = Endpoint("http://127.0.0.1:1", "openai", "bench")
    a = Route("a/bench", "a/bench", True, 0, (RouteTarget("conn:a", ep),))
    b = Route("b/bench", "b/bench", True, 0, (RouteTarget("conn:b", ep),))
    targets = (
        DeploymentTarget("a/bench", 90),
        DeploymentTarget("b/bench", 10),
        DeploymentTarget("b/bench", 5, "shadow"),
    )
    table = RoutingTable.build([a, b], 1, [Deployment("split", targets, "user")])
    windows = TargetWindows(60)
    record = RequestRecord(
        "r", "openai", "chat", "split", 200, 0.0, 0.01, deployment="split", target="a/bench"
    )
    mirror = ShadowMirror(None, None, None, windows, timeout=1)  # type: ignore[arg-type]  # only draws
    dep = table.deployment("split")

    def plain() -> object:
        return table.deployment("a/bench") or table.lookup("a/bench")

    def deployment() -> object:
        return table.deployment("split").pick("user-1", None, None)  # type: ignore[union-attr]

    cases = {
        "plain lookup": plain,
        "deployment pick": deployment,
        "window record": lambda: windows.record(record),
        "shadow draw": lambda: mirror.wants(dep),
    }
    return {name: min(timeit.repeat(f, number=n, repeat=3)) / n * 1e6 for name, f in cases.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--delay", type=float, default=5.0, help="the upstream's answer time, ms")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="which, in this order")
    args = ap.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    if not set(scenarios) <= set(SCENARIOS) or "plain" not in scenarios:
        raise SystemExit(f"--scenarios: some of {', '.join(SCENARIOS)}, plain included")
    duration = args.duration or (3.0 if args.quick else 8.0)
    warmup = args.warmup or (1.0 if args.quick else 2.0)
    rounds = args.rounds or (1 if args.quick else 3)
    cpu = micro()
    print("hot path, CPU per request (µs): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    upstream, port = start_upstream(args.delay)
    home = Path(tempfile.mkdtemp(prefix="sobench-traffic-"))
    gateway, url, env = start_gateway(home)
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
    try:
        prepare(env, url, port)
        for _ in range(rounds):
            for scenario in scenarios:
                point = asyncio.run(load(url, model_of(scenario), args.concurrency, warmup, duration))
                results[scenario].append(point)
        time.sleep(3)  # the shadow workers finish what they queued
        shadows = {s: shadow_state(url, s) for s in scenarios if s.startswith("shadow-") and s != "shadow-0"}
    finally:
        for proc in (gateway, upstream):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    rows = []
    base = statistics.median(p["p50_ms"] for p in results["plain"])
    for scenario in scenarios:
        pts = results[scenario]
        p50 = statistics.median(p["p50_ms"] for p in pts)
        rows.append(
            {
                "scenario": scenario,
                "rps": round(statistics.median(p["rps"] for p in pts), 1),
                "p50_ms": round(p50, 2),
                "p99_ms": round(statistics.median(p["p99_ms"] for p in pts), 2),
                "p50_vs_plain_ms": round(p50 - base, 2),
                "errors": sum(p["errors"] for p in pts),
                "rounds_rps": [round(p["rps"], 1) for p in pts],
            }
        )
    print(f"c={args.concurrency}, upstream {args.delay:g} ms, {rounds} round(s) x {duration:g} s")
    print(f"{'scenario':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'errors':>6}")
    for r in rows:
        print(
            f"{r['scenario']:<12} {r['rps']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} "
            f"{r['p50_vs_plain_ms']:>8} {r['errors']:>6}"
        )
    for name, s in shadows.items():
        print(
            f"{name}: {s.get('samples')} copies compared, {s.get('dropped')} dropped, "
            f"{s.get('failed')} failed, exact match {s.get('exact_match_rate')}"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"traffic-{stamp}.json").write_text(
        json.dumps({"micro_us": cpu, "rows": rows, "shadows": shadows}, indent=2)
    )


if __name__ == "__main__":
    main()
