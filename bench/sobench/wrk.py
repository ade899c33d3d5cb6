"""wrk, the load generator: its Lua script, one run, and the parser of what it prints.

wrk runs outside every measured process, pinned with ``taskset``. The Lua script POSTs a fixed body
read from ``BENCH_BODY_FILE`` (with the ``Name: value`` lines of ``BENCH_HEADERS``) and, in ``done()``,
prints one line ``WRKJSON {...}``: request count, duration, errors, latency percentiles in microseconds.
``BENCH_STOP_AFTER=N`` makes wrk (one thread) stop after N responses: the soak runs a fixed number of
requests that way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LUA_SCRIPT", "WrkResult", "parse_wrk_output", "run_wrk", "write_script"]

MARK = "WRKJSON "

LUA_SCRIPT = r"""
-- Written by bench/sobench/wrk.py: POST a fixed body, print a JSON summary in done().
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\n]+):%s*([^\n]*)") do
  wrk.headers[name] = value
end

local stop_after = tonumber(os.getenv("BENCH_STOP_AFTER") or "0") or 0
if stop_after > 0 then
  local seen = 0
  function response(status, headers, body)
    seen = seen + 1
    if seen == stop_after then
      wrk.thread:stop()
      -- wrk's main thread sleeps for -d; SIGINT (what Ctrl-C sends) ends that sleep and prints the
      -- summary. io.popen, not os.execute: system() ignores SIGINT in the caller while it waits.
      io.popen("kill -INT $PPID"):close()
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. Latencies in milliseconds; ``errors`` as wrk counts them (status = non-2xx/3xx)."""

    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    bytes: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def parse_wrk_output(text: str) -> WrkResult:
    """The ``WRKJSON`` line of wrk's stdout as a ``WrkResult`` (ValueError when there is none)."""
    for raw in reversed(text.splitlines()):
        line = raw.strip()
        if line.startswith(MARK):
            data = json.loads(line[len(MARK) :])
            lat = data["latency_us"]
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=int(data["duration_us"]) / 1e6,
                p50_ms=lat["p50"] / 1000,
                p90_ms=lat["p90"] / 1000,
                p99_ms=lat["p99"] / 1000,
                mean_ms=float(lat["mean"]) / 1000,
                max_ms=lat["max"] / 1000,
                errors={k: int(v) for k, v in data["errors"].items()},
                bytes=int(data.get("bytes", 0)),
            )
    raise ValueError(f"no {MARK.strip()} line in wrk's output: {text[-500:]!r}")


def write_script(directory: Path) -> Path:
    path = directory / "post.lua"
    path.write_text(LUA_SCRIPT)
    return path


def run_wrk(
    url: str,
    *,
    script: Path,
    body_file: Path,
    connections: int,
    duration_s: float,
    pin: Sequence[str] = (),
    stop_after: int = 0,
    timeout_s: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> WrkResult:
    """Run wrk once (one thread: it shares one core with the upstream) and parse its summary."""
    cmd = [
        *pin,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(script),
        url,
    ]
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(body_file),
        "BENCH_STOP_AFTER": str(stop_after),
        "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in (headers or {}).items()),
    }
    limit = duration_s + timeout_s + 30
    if stop_after <= 0:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit, check=False)
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    else:
        out, err, code = _run_until_stopped(cmd, env, limit)
    if code != 0:
        raise RuntimeError(f"wrk exited {code}: {err.strip()[-500:]}")
    return parse_wrk_output(out)


def _run_until_stopped(cmd: list[str], env: dict[str, str], limit: float) -> tuple[str, str, int]:
    """Run wrk; once its worker thread has stopped itself, make sure its main thread wakes up.

    The script's own SIGINT can land on the worker thread instead of the sleeping main thread; once
    only the main thread is left, a SIGINT from here can only go there.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + limit
        worker_seen = False  # before its worker starts, wrk has one thread and no SIGINT handler
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(cmd, limit)
                threads = _threads(proc.pid)
                worker_seen = worker_seen or threads > 1
                if worker_seen and threads == 1:
                    proc.send_signal(signal.SIGINT)
                    time.sleep(0.2)
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        return out.read().decode(errors="replace"), err.read().decode(errors="replace"), proc.returncode


def _threads(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
