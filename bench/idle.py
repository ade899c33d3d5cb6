"""Idle cost of `superollama serve`: CPU ms per second, resident memory, and registry queries per minute
with no request.

    python bench/idle.py                     # 1 and 2 workers, 20 s warm-up, 60 s measured
    python bench/idle.py --workers 1 --seconds 30

Starts `superollama serve` from this checkout (a temporary home, SQLite, the bundled SmolLM2 registered,
port 0), waits for the warm-up, then reads psutil cpu_times (user + system) of the server's process tree
before and after the measured window, and the tree's RSS at the end of the warm-up (MB, 10^6 bytes).
Registry queries are counted by a `sitecustomize` put on the server's PYTHONPATH that listens to
SQLAlchemy's `before_cursor_execute` on every engine of every process of the tree and appends one line
per statement's first words to a file, so the table also says which statements run while nothing
happens.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

SITECUSTOMIZE = """
import os, atexit
_path = os.environ.get("IDLE_QUERY_LOG")
if _path:
    try:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
    except ImportError:
        pass
    else:
        _out = open(f"{_path}.{os.getpid()}", "a", buffering=1)

        @event.listens_for(Engine, "before_cursor_execute")
        def _count(conn, cursor, statement, parameters, context, executemany):
            import time
            words = " ".join(statement.split())[:90]
            _out.write(f"{time.time():.3f} {words}\\n")
"""


def tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def measure(workers: int, warmup: float, seconds: float, extra_env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="so-idle-") as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        log = Path(tmp) / "queries"
        env = {
            **os.environ,
            "SUPEROLLAMA_HOME": str(Path(tmp) / "home"),
            "SUPEROLLAMA_PORT": "0",
            "SUPEROLLAMA_WORKERS": str(workers),
            "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
            "IDLE_QUERY_LOG": str(log),
            **extra_env,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "superollama.cli", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if re.search(r"listening on (http://\S+)", line):
                    break
            else:
                raise RuntimeError("server did not start")
            time.sleep(warmup)
            ps = psutil.Process(proc.pid)
            rss = tree_rss(ps)
            started = time.time()
            before = tree_cpu(ps)
            time.sleep(seconds)
            used = tree_cpu(ps) - before
            ended = time.time()
            nprocs = 1 + len(ps.children(recursive=True))
        finally:
            proc.terminate()
            proc.wait(30)
        kinds: collections.Counter[str] = collections.Counter()
        for part in Path(tmp).glob("queries.*"):
            for row in part.read_text().splitlines():
                at, _, words = row.partition(" ")
                if started <= float(at) <= ended:
                    kinds[words] += 1
        per_min = 60 / seconds
        print(
            f"workers={workers}: {used * 1000 / seconds:.1f} ms/s idle CPU over {seconds:.0f} s "
            f"({nprocs} processes), RSS {rss / 1e6:.1f} MB after {warmup:.0f} s, "
            f"{sum(kinds.values()) * per_min:.0f} registry statements/min"
        )
        for words, n in kinds.most_common(15):
            print(f"  {n * per_min:7.1f}/min  {words}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    for workers in args.workers.split(","):
        measure(int(workers), args.warmup, args.seconds, extra)


if __name__ == "__main__":
    main()
