"""The Redis limiter against real Redis servers: exactness across two OS processes, one round trip per
admission, budgets, and outages (fail open, fail closed, recovery).

The shared server on 127.0.0.1:6379 (CI starts it) carries the accuracy test; counting commands and
stopping Redis use a private ``redis-server`` on a free port, started here.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from tests.waiting import wait_until_sync

from superollama.errors import QuotaExceeded, RateLimited, SuperOllamaError, Unavailable
from superollama.security import Principal
from superollama.security.keys import ModelLimit
from superollama.security.redis_limits import RedisRateLimiter

SHARED_URL = "redis://127.0.0.1:6379/0"

# One gateway process's share of the hammering: admissions with CONCURRENCY in flight, on its own
# connections, starting when the parent says "go"; prints what it saw as one JSON line.
WORKER = r"""
import asyncio, json, sys, time
from superollama.errors import RateLimited
from superollama.security import Principal
from superollama.security.redis_limits import RedisRateLimiter

url, ns, key_id, rpm, attempts, concurrency, frozen = sys.argv[1:8]
attempts, concurrency = int(attempts), int(concurrency)

async def main():
    clock = (lambda: float(frozen)) if frozen != "-" else None
    limiter = RedisRateLimiter(url, namespace=ns, clock=clock, timeout=5.0, fail_open=False)
    principal = Principal(key_id, "hammer", "so-hammer00", rpm=int(rpm))
    warm = Principal(key_id + "-warm", "warm", "so-warm0000", rpm=1_000_000)
    await asyncio.gather(*(limiter.admit(warm, "m", 0) for _ in range(concurrency)))  # script, connections
    print("ready", flush=True)
    sys.stdin.readline()
    counts = {"accepted": 0, "rejected": 0, "errors": []}
    todo = iter(range(attempts))

    async def run():
        for _ in todo:
            try:
                await limiter.admit(principal, "m", 0)
                counts["accepted"] += 1
            except RateLimited:
                counts["rejected"] += 1
            except Exception as exc:
                counts["errors"].append(repr(exc))

    t0 = time.time()
    await asyncio.gather(*(run() for _ in range(concurrency)))
    counts["t0"], counts["t1"] = t0, time.time()
    await limiter.close()
    print(json.dumps(counts), flush=True)

asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hammer(rpm: int, attempts: int, frozen: float | None, processes: int = 2) -> dict[str, Any]:
    ns = f"test:{uuid.uuid4().hex[:8]}:"
    key_id = f"key_{uuid.uuid4().hex[:8]}"
    args = [SHARED_URL, ns, key_id, str(rpm), str(attempts), "25", "-" if frozen is None else repr(frozen)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:  # both at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=120)[0].strip().splitlines()[-1]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {
        "pids": [p.pid for p in procs],
        "per_process": [r["accepted"] for r in results],
        "accepted": sum(r["accepted"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
        "errors": [e for r in results for e in r["errors"]],
        "elapsed": max(r["t1"] for r in results) - min(r["t0"] for r in results),
        "overlap": min(r["t1"] for r in results) - max(r["t0"] for r in results),
    }


@pytest.fixture(scope="module")
def shared_redis() -> str:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2):
            pass
    except OSError:
        pytest.fail("Redis on 127.0.0.1:6379 is not running; start it (scripts/test does)")
    return SHARED_URL


def test_two_processes_share_one_exact_limit_with_a_pinned_clock(shared_redis: str) -> None:
    """Exactness alone: with time pinned no token comes back, so the accepted count is the limit."""
    result = _hammer(rpm=600, attempts=1000, frozen=time.time())
    print(f"\npinned clock: {result}")
    assert result["errors"] == []
    assert result["accepted"] + result["rejected"] == 2000
    assert abs(result["accepted"] - 600) <= 6  # ±1 % (it is exactly 600 unless the script is wrong)
    assert all(n > 0 for n in result["per_process"])  # both processes took part
    assert result["overlap"] > 0  # and they ran at the same time


def test_two_processes_with_redis_time(shared_redis: str) -> None:
    """The real thing: Redis's clock. GCRA gives back 10 requests a second at 600 rpm, so the bound is
    600 + 10 x elapsed; a short hammer lands within ±1 % of 600."""
    result = _hammer(rpm=600, attempts=450, frozen=None)
    refill = 600 / 60 * result["elapsed"]
    print(
        f"\nRedis clock: {result}; refill during the run <= {refill:.1f}, "
        f"accepted - refill = {result['accepted'] - refill:.1f} (600 ± 6 is ±1 %)"
    )
    assert result["errors"] == []
    assert 600 <= result["accepted"] <= 600 + int(refill) + 1
    assert all(n > 0 for n in result["per_process"]) and result["overlap"] > 0


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {k: v for k, v in out.items() if v and k != "info"}


class PrivateRedis:
    """A redis-server of our own on a free port, which a test may stop and start again."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until_sync(listening, what=f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def admin(private_redis: PrivateRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(private_redis.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def _calls(admin: Redis) -> dict[str, int]:
    stats = await admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


class Monitor:
    """The commands clients send (MONITOR), without those a Lua script runs inside Redis."""

    def __init__(self, url: str, admin: Redis) -> None:
        self._client = Redis.from_url(url, decode_responses=True)
        self._admin = admin
        self._marker = uuid.uuid4().hex

    async def sent_during(self, work: Any) -> list[str]:
        async with self._client.monitor() as monitor:
            await self._admin.echo(f"start-{self._marker}")
            while f"start-{self._marker}" not in (await monitor.next_command())["command"]:
                pass
            await work()
            await self._admin.echo(f"end-{self._marker}")
            sent: list[str] = []
            while True:
                cmd = await monitor.next_command()
                if f"end-{self._marker}" in cmd["command"]:
                    break
                if cmd["client_type"] != "lua":
                    sent.append(cmd["command"].split(" ", 1)[0].upper())
        await self._client.aclose()
        return sent


async def test_one_round_trip_per_admission_and_settlements_coalesced_per_key(
    private_redis: PrivateRedis, admin: Redis
) -> None:
    """One EVALSHA per admission whatever the buckets; 50 settlements of one key inside one
    ``settle_delay`` go out as a single EVALSHA carrying their sums (tokens back and USD spent)."""
    limiter = RedisRateLimiter(private_redis.url, settle_delay=0.2)
    p = Principal(
        "key_rt",
        "n",
        "so-roundtrp",
        rpm=1000,
        tpm=100_000,
        model_limits=(ModelLimit("m*", rpm=500, tpm=50_000),),
        budget_usd=100.0,
    )
    admissions: list[Any] = []

    async def admit() -> None:
        admissions.extend([await limiter.admit(p, "m1", 100) for _ in range(50)])

    async def settle() -> None:
        for admission in admissions:
            await limiter.settle(admission, 40, cost=0.001)
        await limiter.flush()

    try:
        # The first call of each script loads it (NOSCRIPT, SCRIPT LOAD, EVALSHA) and connects.
        await limiter.settle(await limiter.admit(p, "m1", 10), 5)
        await limiter.flush()
        before = await _calls(admin)
        admitted = await Monitor(private_redis.url, admin).sent_during(admit)
        settled = await Monitor(private_redis.url, admin).sent_during(settle)
        after = await _calls(admin)
    finally:
        await limiter.close()
    inside = {k: v for k, v in _delta(before, after).items() if k not in ("evalsha", "echo", "hello")}
    print(
        f"\nsent by the limiter: {len(admitted)} for 50 admissions ({set(admitted)}), {len(settled)} for "
        f"50 settlements ({set(settled)}); run inside the scripts: {inside}"
    )
    assert admitted == ["EVALSHA"] * 50  # 4 buckets + the budget: still one command each
    assert settled == ["EVALSHA"]
    assert _delta(before, after)["evalsha"] == 51
    assert float(await admin.get("so:{key_rt}:spend:" + time.strftime("%Y-%m", time.gmtime()))) == (
        pytest.approx(0.05)
    )


async def test_script_reloads_after_a_flush(private_redis: PrivateRedis, admin: Redis) -> None:
    limiter = RedisRateLimiter(private_redis.url)
    p = Principal("key_fl", "n", "so-flushed0", rpm=2)
    try:
        await limiter.admit(p, "m", 0)
        await admin.script_flush()
        await limiter.admit(p, "m", 0)
        with pytest.raises(RateLimited) as info:
            await limiter.admit(p, "m", 0)
    finally:
        await limiter.close()
    assert info.value.retry_after is not None and 29 < info.value.retry_after <= 30
    assert info.value.headers["x-ratelimit-remaining-requests"] == "0"


async def test_tokens_settle_and_budget_in_redis(private_redis: PrivateRedis) -> None:
    now = [time.time()]
    limiter = RedisRateLimiter(private_redis.url, clock=lambda: now[0], namespace="t:")
    p = Principal("key_tb", "n", "so-tokens00", tpm=1000, budget_usd=0.01, budget_period="day")
    try:
        first = await limiter.admit(p, "m", 800)
        assert first.headers["x-ratelimit-remaining-tokens"] == "200"
        with pytest.raises(RateLimited, match="TPM"):
            await limiter.admit(p, "m", 300)
        # 700 tokens back, once the settlement is sent: owed until then, nothing to await
        assert limiter.settle_soon(first, 100, cost=0.006) is None
        await limiter.flush()
        second = await limiter.admit(p, "m", 300)
        assert second.headers["x-ratelimit-remaining-tokens"] == "600"
        await limiter.settle(second, 300, cost=0.004)
        await limiter.flush()
        assert await limiter.spent(p) == pytest.approx(0.01)
        with pytest.raises(QuotaExceeded):
            await limiter.admit(p, "m", 1)
        now[0] += 86400  # the next day: a new budget period, and a full bucket
        assert (await limiter.admit(p, "m", 1)).headers["x-ratelimit-remaining-tokens"] == "999"
        assert await limiter.add_spend(p, 0.5) == pytest.approx(0.5)
    finally:
        await limiter.close()


async def _admit_many(limiter: RedisRateLimiter, p: Principal, n: int) -> list[Any]:
    """Admit ``n`` times; collect each result or error (never anything but our errors)."""
    out: list[Any] = []
    for _ in range(n):
        try:
            out.append(await limiter.admit(p, "m", 10))
        except SuperOllamaError as exc:
            out.append(exc)
    return out


class Monotonic:
    """The limiter's injected monotonic clock (its retry deadline during an outage), moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_redis_down_fail_open_admits_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Monotonic()
    url = f"redis://127.0.0.1:{_free_port()}/0"
    limiter = RedisRateLimiter(url, fail_open=True, retry_interval=0.05, monotonic=clock)
    p = Principal("key_down", "n", "so-downdown", rpm=1, tpm=10, budget_usd=0.0)
    caplog.set_level(logging.WARNING, logger="superollama.security")
    try:
        results = []
        for _ in range(20):
            results += await _admit_many(limiter, p, 5)
            clock.now += 0.06  # past retry_interval: Redis is tried again (and fails again)
        for result in results:
            assert not isinstance(result, Exception) and result.degraded
            await limiter.settle(result, 100, cost=1.0)  # nothing to settle, nothing raised
    finally:
        await limiter.close()
    warnings = [r for r in caplog.records if r.name == "superollama.security"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unreachable" in warnings[0].getMessage() and "fail open" in warnings[0].getMessage()


async def test_redis_down_fail_closed_is_503() -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{_free_port()}/0", fail_open=False, retry_interval=0.05)
    p = Principal("key_closed", "n", "so-closed00", rpm=100)
    try:
        results = await _admit_many(limiter, p, 10)
        with pytest.raises(Unavailable):
            await limiter.spent(p)
    finally:
        await limiter.close()
    assert all(isinstance(r, Unavailable) and r.status == 503 for r in results)


@pytest.mark.parametrize("fail_open", [True, False])
async def test_recovers_when_redis_comes_back(
    private_redis: PrivateRedis, fail_open: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="superollama.security")
    clock = Monotonic()
    limiter = RedisRateLimiter(
        private_redis.url, fail_open=fail_open, retry_interval=0.1, timeout=0.5, monotonic=clock
    )
    p = Principal(f"key_rec_{fail_open}", "n", "so-recover0", rpm=1000)
    try:
        assert not (await limiter.admit(p, "m", 0)).degraded
        private_redis.stop()
        during = await _admit_many(limiter, p, 5)
        if fail_open:
            assert all(not isinstance(r, Exception) and r.degraded for r in during)
        else:
            assert all(isinstance(r, Unavailable) for r in during)
        assert limiter.degraded
        private_redis.start()  # same port, empty: the limiter reconnects by itself
        clock.now += 0.15  # past retry_interval: the next admission tries Redis again
        after = await limiter.admit(p, "m", 0)
        assert not after.degraded and not limiter.degraded
        assert after.headers["x-ratelimit-remaining-requests"] == "999"
    finally:
        await limiter.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "superollama.security"]
    assert len(messages) == 2 and "unreachable" in messages[0] and "reachable again" in messages[1]
