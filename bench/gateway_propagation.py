"""Propagation delay between gateways: how long a change made through one ``serve`` takes to be seen
through another that shares the registry (Postgres) and Redis.

    python bench/gateway_propagation.py                 # 100 changes, the test Postgres and Redis
    python bench/gateway_propagation.py --changes 400 --pg postgresql://postgres@127.0.0.1:5432/test

Two ``superollama serve`` processes from this checkout (``PYTHONPATH=src``), separate homes sharing a
fresh Postgres schema, one Redis database and the secret key. The bundled SmolLM2 is registered through
gateway A; then, in turn, ``cp`` (a new name), ``disable``, ``enable``, ``rm`` through A's admin API, and
after each one B's ``GET /v1/models`` is polled on one keep-alive connection until it shows the change.
The delay is from A's answer to the first answer of B that shows it (a poll costs ~1 ms, which bounds
the resolution). Prints median, p90 and max; the schema is dropped and both gateways stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (http://\S+)")


def start(
    home: Path, name: str, registry: str, redis_url: str, bundled: bool
) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "SUPEROLLAMA_HOME": str(home),
        "SUPEROLLAMA_HOST": "127.0.0.1",
        "SUPEROLLAMA_PORT": "0",
        "SUPEROLLAMA_WORKERS": "1",
        "SUPEROLLAMA_DATABASE_URL": registry,
        "SUPEROLLAMA_REDIS_URL": redis_url,
        "SUPEROLLAMA_GATEWAY_NAME": name,
        "SUPEROLLAMA_BUNDLED_MODEL": "true" if bundled else "false",
        "SUPEROLLAMA_LOG_LEVEL": "WARNING",
    }
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
            return proc, match.group(1)
        if not line:
            break
    proc.kill()
    raise SystemExit(f"gateway {name} did not start:\n{(home / 'serve.log').read_text()[-3000:]}")


def seen(client: httpx.Client, check: Callable[[set[str]], bool], timeout: float = 10.0) -> float:
    """Seconds until B's listing satisfies ``check`` (polled back to back)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        ids = {m["id"] for m in client.get("/v1/models").json()["data"]}
        if check(ids):
            return time.perf_counter() - started
    raise SystemExit("a change was not seen within 10 s")


async def _sql(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    from cryptography.fernet import Fernet

    schema = f"bench_gateways_{uuid.uuid4().hex[:10]}"
    registry = f"{args.pg.replace('postgresql://', 'postgresql+asyncpg://')}?schema={schema}"
    secret = Fernet.generate_key()
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        homes = [Path(tmp) / "a", Path(tmp) / "b"]
        for home in homes:
            home.mkdir()
            (home / "secret.key").write_bytes(secret)
            (home / "secret.key").chmod(0o600)
        try:
            a_proc, a_url = start(homes[0], "bench-a", registry, args.redis, bundled=True)
            procs.append(a_proc)
            b_proc, b_url = start(homes[1], "bench-b", registry, args.redis, bundled=False)
            procs.append(b_proc)
            delays: dict[str, list[float]] = {"cp": [], "disable": [], "enable": [], "rm": []}
            with httpx.Client(base_url=a_url, timeout=30) as a, httpx.Client(base_url=b_url, timeout=30) as b:
                made = 0
                while made < args.changes:
                    name = f"bench:c{made}"
                    a.post(
                        "/admin/v1/copy", json={"source": "smollm2:135m", "destination": name}
                    ).raise_for_status()
                    delays["cp"].append(seen(b, lambda ids, n=name: n in ids))
                    a.post(f"/admin/v1/models/{name}/disable").raise_for_status()
                    delays["disable"].append(seen(b, lambda ids, n=name: n not in ids))
                    a.post(f"/admin/v1/models/{name}/enable").raise_for_status()
                    delays["enable"].append(seen(b, lambda ids, n=name: n in ids))
                    a.delete(f"/admin/v1/models/{name}").raise_for_status()
                    delays["rm"].append(seen(b, lambda ids, n=name: n not in ids))
                    made += 4
            every = sorted(d for values in delays.values() for d in values)
            print(f"propagation A → B over {len(every)} changes (cp, disable, enable, rm in turn), ms:")
            median, p90, top = statistics.median(every), every[int(len(every) * 0.9)], every[-1]
            print(f"  median {median * 1000:.1f}  p90 {p90 * 1000:.1f}  max {top * 1000:.1f}")
            for kind, values in delays.items():
                print(
                    f"  {kind:8s} median {statistics.median(values) * 1000:.1f}  max {max(values) * 1000:.1f}"
                )
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            asyncio.run(_sql(args.pg, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
