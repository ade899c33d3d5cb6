"""The c=1 tail without wrk: one keep-alive connection, one request at a time, each timed on its own, and
when the slow ones (the slowest 1 %) came.

    python bench/tail.py                    # the floor, all ON, all OFF; 2 rounds of 5 s each, JSON
    python bench/tail.py --seconds 10 --rounds 3

Same upstream, pinning, governance and variants as ``run.py`` (``sobench.systems``). The client is a
plain socket writing a prepared request and reading to the end of its ``Content-Length``, on the load
generator's CPU: it adds the least a client can, so the gap to the floor is the gateway's. Beside p50,
p99 and the maximum, it prints the times (ms from the round's start) of the slowest 1 % and the gaps
between them: slow requests spread evenly point at per-request work; bunched a few ms apart and bunches
far apart point at something periodic stalling the event loop (a flush, a poller, a collection).
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # bench/run.py: the Bench that starts nginx, Redis and the systems
from sobench import systems

Timed = list[tuple[float, float]]  # (start, seconds) of each request


def _request(target: systems.Target, body: bytes) -> tuple[tuple[str, int], bytes]:
    url = urlsplit(target.url)
    assert url.hostname is not None and url.port is not None
    head = [
        f"POST {url.path} HTTP/1.1",
        f"Host: {url.hostname}:{url.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in target.headers.items()),
    ]
    return (url.hostname, url.port), ("\r\n".join(head) + "\r\n\r\n").encode() + body


def probe(target: systems.Target, body: bytes, seconds: float) -> Timed:
    """Requests one after the other on one connection for ``seconds``."""
    address, request = _request(target, body)
    timed: Timed = []
    with socket.create_connection(address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        end = time.perf_counter() + seconds
        while (started := time.perf_counter()) < end:
            sock.sendall(request)
            while True:
                head, blank, rest = pending.partition(b"\r\n\r\n")
                if blank:
                    length = next(
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    if len(rest) >= length:
                        if not head.startswith(b"HTTP/1.1 200"):
                            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
                        pending = rest[length:]
                        break
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the server closed the connection")
                pending += chunk
            timed.append((started, time.perf_counter() - started))
    return timed


def describe(label: str, timed: Timed) -> str:
    latencies = sorted(seconds for _, seconds in timed)
    n = len(latencies)
    p99 = latencies[int(n * 0.99)]
    slow = [start for start, seconds in timed if seconds >= p99]
    first = timed[0][0]
    gaps = [f"{(b - a) * 1000:.1f}" for a, b in itertools.pairwise(slow)]
    return (
        f"{label}: {n} requests, p50 {latencies[n // 2] * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, "
        f"max {latencies[-1] * 1000:.2f} ms\n"
        f"  slowest 1 % at (ms): {' '.join(f'{(s - first) * 1000:.0f}' for s in slow[:40])}\n"
        f"  gaps between them (ms): {' '.join(gaps[:40])}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="requests per system per round")
    args = parser.parse_args()
    bench = run.Bench(argparse.Namespace(quick=True))
    try:
        ctx, _ = bench.start_upstream()
        bench.start_redis()
        bench.running = [systems.start_floor(ctx)]
        bench.running += [systems.start_superollama(ctx, v) for v in systems.SUPEROLLAMA_VARIANTS]
        if bench.load_cpu is not None:
            os.sched_setaffinity(0, {bench.load_cpu})
        for round_ in range(1, args.rounds + 1):
            for running in bench.running:
                if running.unavailable:
                    print(f"{running.label}: {running.unavailable}")
                    continue
                body = bench.body_file(running, "json").read_bytes()
                target = running.targets["json"]
                probe(target, body, 1.0)  # warm-up
                timed = probe(target, body, args.seconds)
                print(describe(f"{running.label}, round {round_}", timed), flush=True)
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
