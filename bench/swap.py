"""Swap scenario: a deployment changes target under load; how long the switch takes, what fails.

    python bench/swap.py                  # overlap and stop-first, c=8, the bundled SmolLM2 twice
    python bench/swap.py --modes overlap --concurrency 16 --before 5 --after 5

It starts ``superollama serve`` from this checkout (a temporary home, the bundled SmolLM2 registered as
``smollm2:135m``), copies that version to ``smollm2:135m-b`` (``cp``: a second version on the same
files, its own llama.cpp instance), deploys ``bench-chat`` on the first, keeps ``--concurrency`` clients
sending 4-token chats to ``bench-chat``, then deploys it on the second and keeps the load on until
``--after`` seconds past the switch. Per mode it reports:

- ``switch s``: the deploy call, from sent to answered (start, health, warm-up, publish);
- ``first new s``: from the deploy call sent to the first answer from the new version;
- ``failed``: requests that got no 200 (the goal: 0);
- requests, and p50 / p99 / max latency over the whole run (stop-first shows the queue wait in max).

Each server runs with ``SUPEROLLAMA_DEPLOY_SWAP`` set to the mode. Writes ``bench/results/swap-STAMP.json``.
Every process it starts it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
A, B = "smollm2:135m", "smollm2:135m-b"
TARGET = "X-Superollama-Target"


@dataclass
class Outcome:
    mode: str
    concurrency: int
    switch_s: float = 0.0
    first_new_s: float | None = None
    requests: int = 0
    failed: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    by_target: dict[str, int] = field(default_factory=dict)
    swap: dict[str, object] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class Server:
    def __init__(self, home: Path, mode: str) -> None:
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "SUPEROLLAMA_HOME": str(home)}
        env |= {"SUPEROLLAMA_PORT": "0", "SUPEROLLAMA_WORKERS": "1", "SUPEROLLAMA_DEPLOY_SWAP": mode}
        env |= {"SUPEROLLAMA_LLAMACPP_PARALLEL": "8", "SUPEROLLAMA_LOG_LEVEL": "WARNING"}
        env.pop("SUPEROLLAMA_URL", None)
        self.env = env
        self.log = (home / "serve.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "superollama.cli", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        self.url = ""
        while time.monotonic() < deadline and not self.url:
            line = self.proc.stdout.readline()
            if not line:
                break
            if m := re.search(r"listening on (http://\S+)", line):
                self.url = m.group(1)
        if not self.url:
            self.stop()
            raise RuntimeError(f"serve did not start; see {home / 'serve.log'}")

    def cli(self, *args: str) -> str:
        env = {**self.env, "SUPEROLLAMA_URL": self.url}
        command = [sys.executable, "-m", "superollama.cli", *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"superollama {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()


def run_mode(mode: str, concurrency: int, before: float, after: float) -> Outcome:
    out = Outcome(mode, concurrency)
    with tempfile.TemporaryDirectory(prefix="sobench-swap-") as tmp:
        server = Server(Path(tmp), mode)
        try:
            server.cli("cp", A, B)
            server.cli("deploy", "bench-chat", "--target", f"{A}=100")
            _load(server, out, before, after)
        finally:
            server.stop()
    return out


def _load(server: Server, out: Outcome, before: float, after: float) -> None:
    stop = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    seen_new: list[float] = []
    body = {"model": "bench-chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = http.post(server.url + "/v1/chat/completions", json=body)
                    ok, target, error = r.status_code == 200, r.headers.get(TARGET, "?"), f"{r.status_code}"
                except httpx.HTTPError as exc:
                    ok, target, error = False, "?", repr(exc)
                t1 = time.perf_counter()
                with lock:
                    latencies.append(t1 - t0)
                    if not ok:
                        out.failed += 1
                        out.errors.append(error)
                        continue
                    out.by_target[target] = out.by_target.get(target, 0) + 1
                    if target == B and not seen_new:
                        seen_new.append(t1)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(out.concurrency)]
    for t in threads:
        t.start()
    time.sleep(before)  # steady load on the first version before the switch (time is what is measured)
    t_switch = time.perf_counter()
    reply = json.loads(server.cli("deploy", "bench-chat", "--target", f"{B}=100", "--json"))
    out.switch_s = time.perf_counter() - t_switch
    out.swap = reply.get("swap", {})
    time.sleep(after)  # load on the new version after the switch
    stop.set()
    for t in threads:
        t.join(300)
    out.first_new_s = (seen_new[0] - t_switch) if seen_new else None
    out.requests = len(latencies)
    ms = sorted(x * 1000 for x in latencies)
    if ms:
        out.p50_ms = statistics.median(ms)
        out.p99_ms = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        out.max_ms = ms[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="overlap,stop-first")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--before", type=float, default=4.0, help="seconds of load before the switch")
    ap.add_argument("--after", type=float, default=4.0, help="seconds of load after the switch")
    args = ap.parse_args()
    results = [run_mode(m, args.concurrency, args.before, args.after) for m in args.modes.split(",")]
    print(f"{'mode':<11} {'c':>3} {'switch s':>9} {'first new s':>12} {'requests':>9} {'failed':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")  # fmt: skip
    for r in results:
        first = f"{r.first_new_s:.2f}" if r.first_new_s is not None else "-"
        print(f"{r.mode:<11} {r.concurrency:>3} {r.switch_s:>9.2f} {first:>12} {r.requests:>9} {r.failed:>7} "
              f"{r.p50_ms:>8.0f} {r.p99_ms:>8.0f} {r.max_ms:>8.0f}")  # fmt: skip
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"swap-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
