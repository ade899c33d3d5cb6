"""Ping latency of the two candidate change-feed transports, on the test Postgres and Redis.

    python bench/notify_vs_pubsub.py [--count 200]

Postgres: one connection sends ``pg_notify`` inside a transaction (as a registry change does, delivered at
commit), another ``LISTEN``s. Redis: one client ``PUBLISH``es, another is subscribed. Each ping is sent
only after the previous one arrived; the delay is from just before the send to its arrival. The result
is why ``control/feed.py`` uses NOTIFY (see its docstring: speed is a tie, transactions decide).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg
import redis.asyncio as aioredis

CHANNEL = "superollama_bench_ping"


async def postgres(dsn: str, count: int) -> list[float]:
    sender, listener = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    arrived: asyncio.Queue[float] = asyncio.Queue()
    await listener.add_listener(CHANNEL, lambda *_args: arrived.put_nowait(time.perf_counter()))
    delays = []
    try:
        for i in range(count):
            sent = time.perf_counter()
            async with sender.transaction():
                await sender.execute("SELECT pg_notify($1, $2)", CHANNEL, str(i))
            delays.append(await asyncio.wait_for(arrived.get(), 10) - sent)
    finally:
        await sender.close()
        await listener.close()
    return delays


async def redis_pubsub(url: str, count: int) -> list[float]:
    sender, listener = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscription's confirmation
    delays = []
    try:
        for i in range(count):
            sent = time.perf_counter()
            await sender.publish(CHANNEL, str(i))
            while True:
                message = await pubsub.get_message(timeout=10)
                if message is not None and message["type"] == "message":
                    break
            delays.append(time.perf_counter() - sent)
    finally:
        await pubsub.aclose()
        await sender.aclose()
        await listener.aclose()
    return delays


def report(name: str, delays: list[float]) -> None:
    ordered = sorted(d * 1000 for d in delays)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    median, top = statistics.median(ordered), ordered[-1]
    print(f"{name:22s} median {median:.2f} ms  p99 {p99:.2f} ms  max {top:.2f} ms")


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    report("Postgres NOTIFY (tx)", asyncio.run(postgres(args.pg, args.count)))
    report("Redis PUBLISH", asyncio.run(redis_pubsub(args.redis, args.count)))


if __name__ == "__main__":
    main()
