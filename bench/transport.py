"""Each backend client alone: our ``h1`` client, aiohttp's (the external-connection transport) and httpx.

Why: the transport seam (``gateway/transport.py``) mounts one client for the instances we run and one
for external connections; this measures what each costs per request, with nothing else in the process.
The upstream is a tiny keep-alive HTTP/1.1 server in a child process (uvloop, raw asyncio) that answers
every POST with a fixed 604-byte ``chat.completion``; the client side runs on one event loop (uvloop)
with ``c`` tasks, each sending one request after the other (POST, read the whole body) for ``duration``
seconds after a warm-up. Prints req/s, p50 and p99 latency per client and concurrency.

Usage: python bench/transport.py [--duration 5] [--warmup 1] [--concurrency 1,16] [--clients h1,aiohttp,httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import uvloop

BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "x" * 380}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
    }
).encode()
REQUEST = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]}).encode()
HEADERS = (("Content-Type", "application/json"),)
PATH = "/v1/chat/completions"


# -- the upstream (child process) -------------------------------------------------------------------
class _Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(BODY),
            BODY,
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end == -1:
                return
            length = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self.transport.write(self.reply)  # type: ignore[attr-defined]


async def _serve_upstream() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Upstream, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


# -- the clients ------------------------------------------------------------------------------------
Send = Callable[[], Awaitable[None]]


async def _client(name: str, base: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    if name == "h1":
        from superollama.gateway.h1 import H1Client

        h1 = H1Client()

        async def send_h1() -> None:
            async with await h1.post(base, PATH, REQUEST, HEADERS, timeout=30) as r:
                await r.read()

        return send_h1, h1.close
    if name == "aiohttp":
        from superollama.gateway.transport_aiohttp import AiohttpTransport

        aio = AiohttpTransport(per_host=0)

        async def send_aiohttp() -> None:
            async with await aio.post(base, PATH, REQUEST, HEADERS, timeout=30) as r:
                await r.read()

        return send_aiohttp, aio.close
    if name == "httpx":
        import httpx

        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

        async def send_httpx() -> None:
            r = await client.post(base + PATH, content=REQUEST, headers=dict(HEADERS), timeout=30)
            r.read()

        return send_httpx, client.aclose
    raise SystemExit(f"unknown client {name!r}")


async def _measure(send: Send, concurrency: int, warmup: float, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    recording = False
    stop = False

    async def worker() -> None:
        while not stop:
            t0 = time.perf_counter()
            await send()
            if recording:
                latencies.append(time.perf_counter() - t0)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)  # the bench measures time: these sleeps are its windows
    recording = True
    start = time.perf_counter()
    await asyncio.sleep(duration)
    recording = False
    elapsed = time.perf_counter() - start
    stop = True
    await asyncio.gather(*tasks)
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


async def _bench(args: argparse.Namespace, base: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name in args.clients.split(","):
        for c in (int(x) for x in args.concurrency.split(",")):
            send, close = await _client(name, base)
            try:
                result = await _measure(send, c, args.warmup, args.duration)
            finally:
                await close()
            rows.append({"client": name, "c": c, **result})
            print(
                f"{name:8} c={c:<3} {result['rps']:8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                f"p99 {result['p99_ms']:6.2f} ms",
                flush=True,
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--clients", default="h1,aiohttp,httpx")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON at the end")
    ap.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.upstream:
        uvloop.run(_serve_upstream())
        return 0
    child = subprocess.Popen(
        [sys.executable, __file__, "--upstream"], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        rows = uvloop.run(_bench(args, f"http://127.0.0.1:{port}"))
        if args.json:
            print(json.dumps(rows, indent=1))
    finally:
        child.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
