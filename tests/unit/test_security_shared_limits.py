"""The shared-memory GCRA limiter (``--workers N`` without Redis): the same answers as ``MemoryRateLimiter``
on the same sequence with a pinned clock, exact across real processes, and alive after a worker is killed
while it holds the table's lock."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import struct
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

import pytest

from superollama.errors import QuotaExceeded, RateLimited, SuperOllamaError
from superollama.security import MemoryRateLimiter, Principal
from superollama.security.keys import ModelLimit
from superollama.security.limits import Admission
from superollama.security.shared_limits import SharedLimitTable, SharedMemoryRateLimiter

T0 = datetime(2026, 3, 31, 23, 58, 0, tzinfo=UTC).timestamp()  # a budget month ends during the replay


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


PRINCIPALS = (
    Principal("key_a", "a", "so-aaaaaaaa", rpm=7),
    Principal("key_b", "b", "so-bbbbbbbb", tpm=500),
    Principal("key_c", "c", "so-cccccccc", rpm=30, tpm=2000, budget_usd=3.0, budget_period="month"),
    Principal(
        "key_d",
        "d",
        "so-dddddddd",
        rpm=50,
        model_limits=(ModelLimit("small*", rpm=4, tpm=300), ModelLimit("big", tpm=100)),
        budget_usd=1.5,
        budget_period="day",
    ),
    Principal("key_e", "e", "so-eeeeeeee"),
)


def outcome(result: Admission | BaseException) -> tuple[Any, ...]:
    """What a caller can observe of an admission or of its refusal."""
    if isinstance(result, SuperOllamaError):
        return (type(result).__name__, result.message, result.retry_after, dict(result.headers))
    assert isinstance(result, Admission), result
    return ("ok", result.reserved_tokens, result.buckets, dict(result.headers), result.degraded)


async def attempt(call: Awaitable[Admission]) -> Admission | BaseException:
    try:
        return await call
    except (RateLimited, QuotaExceeded) as exc:
        return exc


async def replay(seed: int, slots: int, steps: int = 3000) -> SharedLimitTable:
    rng = random.Random(seed)
    clock = Clock()
    table = SharedLimitTable(slots)
    memory = MemoryRateLimiter(clock=clock)
    shared = SharedMemoryRateLimiter(table, clock=clock)
    pending: list[tuple[Admission, Admission]] = []
    for step in range(steps):
        roll = rng.random()
        principal = rng.choice(PRINCIPALS)
        if roll < 0.55:
            model = rng.choice(("small-1", "small-2", "big", "other"))
            tokens = rng.choice((0, 1, 10, 60, 250, 5000))
            a = await attempt(memory.admit(principal, model, tokens))
            b = await attempt(shared.admit(principal, model, tokens))
            assert outcome(a) == outcome(b), (step, outcome(a), outcome(b))
            if isinstance(a, Admission) and isinstance(b, Admission):
                pending.append((a, b))
        elif roll < 0.8 and pending:
            a, b = pending.pop(rng.randrange(len(pending)))
            actual = rng.choice((0, 5, 40, 400, 3000))
            cost = rng.choice((0.0, 0.0, 0.25, 1.0))
            await memory.settle(a, actual, cost=cost)
            await shared.settle(b, actual, cost=cost)
        elif roll < 0.85:
            amount = rng.choice((0.1, 0.5))
            assert await memory.add_spend(principal, amount) == await shared.add_spend(principal, amount)
        elif roll < 0.9:
            assert await memory.spent(principal) == await shared.spent(principal)
        else:
            clock.t += rng.choice((0.001, 0.5, 2.0, 8.57, 31.0))
    return table


async def test_same_answers_as_the_memory_limiter_on_one_sequence() -> None:
    for seed in range(4):
        await replay(seed, slots=1 << 12)


async def test_a_small_table_recycles_expired_slots() -> None:
    """32 slots for 5 keys' buckets and spends (19 live at most), over many minutes: expired slots are
    swept and reused, the answers stay the memory limiter's."""
    table = await replay(7, slots=32, steps=6000)
    assert table.live(T0) <= 19


async def test_a_full_table_admits_unchecked() -> None:
    clock = Clock()
    shared = SharedMemoryRateLimiter(SharedLimitTable(16), clock=clock)
    admitted = [await shared.admit(Principal(f"k{i}", "x", "so-xxxxxxxx", rpm=1), "m", 0) for i in range(17)]
    assert [a.degraded for a in admitted] == [False] * 16 + [True]
    clock.t += 61  # every bucket full again: their slots expire and are reused
    again = await shared.admit(Principal("k99", "x", "so-xxxxxxxx", rpm=1), "m", 0)
    assert not again.degraded and again.buckets


def _child_admits(
    table: SharedLimitTable, principal: Principal, attempts: int, write_fd: int, go_fd: int
) -> None:
    code = 1
    try:
        limiter = SharedMemoryRateLimiter(table, clock=lambda: T0)
        os.read(go_fd, 1)  # every child starts together: the admissions really race

        async def run() -> int:
            accepted = 0
            for _ in range(attempts):
                try:
                    await limiter.admit(principal, "m", 0)
                    accepted += 1
                except RateLimited:
                    pass
            return accepted

        os.write(write_fd, struct.pack("<I", asyncio.run(run())))
        code = 0
    finally:
        os._exit(code)


def test_exact_across_processes() -> None:
    """Three processes race 3 x 700 admissions at one instant on a 1000 rpm key: exactly 1000 pass.
    (How the 1000 split between them is up to the scheduler: one may well take them all.)"""
    table = SharedLimitTable()
    principal = Principal("key_p", "p", "so-pppppppp", rpm=1000)
    go_read, go_write = os.pipe()
    children = []
    for _ in range(3):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child_admits(table, principal, 700, write_fd, go_read)
        os.close(write_fd)
        children.append((pid, read_fd))
    os.write(go_write, b"go!")
    os.close(go_write)
    os.close(go_read)
    accepted = []
    for pid, read_fd in children:
        data = os.read(read_fd, 4)
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        accepted.append(struct.unpack("<I", data)[0])
    assert sum(accepted) == 1000, accepted


def test_a_worker_killed_holding_the_lock_does_not_block_the_others() -> None:
    table = SharedLimitTable()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            with table.locked():
                os.write(write_fd, b"x")
                signal.pause()
        finally:
            os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 1) == b"x"
    os.close(read_fd)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    limiter = SharedMemoryRateLimiter(table, clock=lambda: T0)
    principal = Principal("key_k", "k", "so-kkkkkkkk", rpm=2)
    for _ in range(2):
        asyncio.run(limiter.admit(principal, "m", 0))
    with pytest.raises(RateLimited):
        asyncio.run(limiter.admit(principal, "m", 0))
