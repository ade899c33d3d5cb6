"""The in-memory GCRA limiter with a hand-moved clock: rpm, tpm, per-model buckets, reservation and
settlement, budgets, and the x-ratelimit-* headers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from superollama.errors import QuotaExceeded, RateLimited
from superollama.security import MemoryRateLimiter, Principal
from superollama.security.keys import ModelLimit
from superollama.security.limits import Plans, format_duration

T0 = datetime(2026, 3, 31, 23, 59, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def tick(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> MemoryRateLimiter:
    return MemoryRateLimiter(clock=clock)


def key(**limits: object) -> Principal:
    return Principal("key_1", "ci", "so-abcdefgh", **limits)  # type: ignore[arg-type]


async def test_requests_per_minute(limiter: MemoryRateLimiter, clock: Clock) -> None:
    p = key(rpm=3)
    for remaining in (2, 1, 0):
        admission = await limiter.admit(p, "m", 0)
        assert admission.headers["x-ratelimit-remaining-requests"] == str(remaining)
        assert admission.headers["x-ratelimit-limit-requests"] == "3"
    with pytest.raises(RateLimited) as info:
        await limiter.admit(p, "m", 0)
    err = info.value
    assert err.status == 429 and err.type == "rate_limit_error" and err.code == "rate_limit_exceeded"
    assert err.retry_after == pytest.approx(20.0)  # one request every 20 s
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert "so-abcdefgh" in err.message and "3 RPM" in err.message
    clock.tick(19.9)
    with pytest.raises(RateLimited):
        await limiter.admit(p, "m", 0)
    clock.tick(0.1)
    assert (await limiter.admit(p, "m", 0)).headers["x-ratelimit-remaining-requests"] == "0"
    clock.tick(60)
    assert (await limiter.admit(p, "m", 0)).headers["x-ratelimit-remaining-requests"] == "2"


async def test_exactly_the_limit_at_one_instant(limiter: MemoryRateLimiter) -> None:
    for rpm in (7, 600, 10_000):
        p = Principal(f"k{rpm}", "n", "so-abcdefgh", rpm=rpm)
        accepted = 0
        for _ in range(rpm + 50):
            try:
                await limiter.admit(p, "m", 0)
                accepted += 1
            except RateLimited:
                pass
        assert accepted == rpm


async def test_tokens_reserved_then_refunded(limiter: MemoryRateLimiter) -> None:
    p = key(tpm=1000)
    first = await limiter.admit(p, "m", 600)
    assert first.reserved_tokens == 600
    assert first.headers["x-ratelimit-remaining-tokens"] == "400"
    with pytest.raises(RateLimited, match="1000 TPM"):
        await limiter.admit(p, "m", 600)
    await limiter.settle(first, 100)  # it used 100 of the 600 reserved: 500 come back
    second = await limiter.admit(p, "m", 600)
    assert second.headers["x-ratelimit-remaining-tokens"] == "300"


async def test_tokens_over_the_reservation_are_charged(limiter: MemoryRateLimiter, clock: Clock) -> None:
    p = key(tpm=1000)
    admission = await limiter.admit(p, "m", 100)
    await limiter.settle(admission, 1500)  # 1,400 more than reserved: the bucket is in debt
    with pytest.raises(RateLimited) as info:
        await limiter.admit(p, "m", 1)
    assert info.value.retry_after == pytest.approx(30.06)  # 1,500 tokens = 90 s of 1000/min, minus 60
    clock.tick(31)
    await limiter.admit(p, "m", 1)


async def test_a_refused_request_charges_nothing(limiter: MemoryRateLimiter) -> None:
    p = key(rpm=10, tpm=100)
    await limiter.admit(p, "m", 90)
    with pytest.raises(RateLimited, match="TPM"):
        await limiter.admit(p, "m", 50)  # tokens refuse: the request must not count against rpm
    admission = await limiter.admit(p, "m", 10)
    assert admission.headers["x-ratelimit-remaining-requests"] == "8"
    assert admission.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_an_estimate_larger_than_the_bucket_waits_for_a_full_one(limiter: MemoryRateLimiter) -> None:
    p = key(tpm=100)
    admission = await limiter.admit(p, "m", 5000)
    assert admission.buckets[0].cost == 100 and admission.reserved_tokens == 5000
    with pytest.raises(RateLimited):
        await limiter.admit(p, "m", 1)


async def test_per_model_limits(limiter: MemoryRateLimiter) -> None:
    p = key(rpm=5, model_limits=(ModelLimit("smollm2:*", rpm=2),))
    await limiter.admit(p, "smollm2:135m", 0)
    await limiter.admit(p, "smollm2:360m", 0)  # same pattern, same bucket
    with pytest.raises(RateLimited, match="on models 'smollm2:\\*'"):
        await limiter.admit(p, "smollm2:135m", 0)
    await limiter.admit(p, "llama3:8b", 0)
    admission = await limiter.admit(p, "llama3:8b", 0)
    assert admission.headers["x-ratelimit-remaining-requests"] == "1"  # the key's own bucket: 5 - 4
    await limiter.admit(p, "llama3:8b", 0)
    with pytest.raises(RateLimited):
        await limiter.admit(p, "llama3:8b", 0)  # the key's 5 rpm cover every model


async def test_headers_show_the_most_constraining_bucket(limiter: MemoryRateLimiter) -> None:
    p = key(rpm=100, tpm=10_000, model_limits=(ModelLimit("m", rpm=3, tpm=50),))
    admission = await limiter.admit(p, "m", 20)
    assert admission.headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "20s",
        "x-ratelimit-limit-tokens": "50",
        "x-ratelimit-remaining-tokens": "30",
        "x-ratelimit-reset-tokens": "24s",
    }


async def test_no_limits_no_headers(limiter: MemoryRateLimiter) -> None:
    admission = await limiter.admit(key(), "m", 10)
    assert admission.buckets == () and dict(admission.headers) == {}
    await limiter.settle(admission, 20, cost=0.5)
    assert await limiter.spent(key()) == 0.5


async def test_budget(limiter: MemoryRateLimiter, clock: Clock) -> None:
    p = key(budget_usd=1.0, budget_period="month")
    admission = await limiter.admit(p, "m", 10)
    await limiter.settle(admission, 10, cost=0.6)
    await limiter.admit(p, "m", 10)  # 0.6 < 1.0
    assert await limiter.add_spend(p, 0.4) == pytest.approx(1.0)
    with pytest.raises(QuotaExceeded) as info:
        await limiter.admit(p, "m", 10)
    assert info.value.status == 429 and info.value.type == info.value.code == "insufficient_quota"
    assert "month" in info.value.message
    clock.tick(60)  # 2026-04-01: a new month
    await limiter.admit(p, "m", 10)
    assert await limiter.spent(p) == 0


async def test_budget_is_checked_before_rate_limits(limiter: MemoryRateLimiter) -> None:
    p = key(rpm=1, budget_usd=0.0)
    with pytest.raises(QuotaExceeded):
        await limiter.admit(p, "m", 0)


async def test_idle_buckets_are_forgotten(clock: Clock) -> None:
    limiter = MemoryRateLimiter(clock=clock, sweep_every=10)
    for i in range(10):
        await limiter.admit(Principal(f"k{i}", "n", "so-x", rpm=60), "m", 0)
    assert len(limiter._tats) == 10
    clock.tick(2)
    for _ in range(10):
        await limiter.admit(Principal("busy", "n", "so-x", rpm=6000), "m", 0)
    assert set(limiter._tats) == {"{busy}:rpm"}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (1e-9, "1ms"),
        (0.0004, "1ms"),
        (0.02, "20ms"),
        (0.0201, "21ms"),
        (0.999, "999ms"),
        (0.9999999, "1000ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.9991, "60s"),
        (360, "6m0s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_plan_is_kept_per_principal_object_and_model_within_its_bound() -> None:
    plans = Plans(str.upper, size=2)  # store keys: anything the limiter makes of a bucket's key
    p = key(rpm=60, tpm=1000, model_limits=(ModelLimit("big-*", tpm=10),))
    plan = plans.get(p, "big-1")
    assert plans.get(p, "big-1") is plan
    assert [b.kind for b in plan.buckets] == ["requests", "tokens", "tokens"]
    assert plan.keys == tuple(b.key.upper() for b in plan.buckets)
    assert [b.cost for b in plan.charge(40)] == [1, 40, 10]  # a token cost is at most the bucket's size
    assert plans.get(dataclasses.replace(p), "big-1") is not plan  # equal, but a new object: a reload
    for model in ("a", "b", "c", "d"):
        assert len(plans.get(p, model).buckets) == 2
        assert len(plans) <= 2
