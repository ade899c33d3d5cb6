"""One behaviour for every ``RateLimiter``: memory, shared memory (``--workers N``), Redis (real server).

Each test runs against each implementation through the seam's methods only (``admit``, ``settle``,
``add_spend``, ``spent``, ``close``). Time is the injected clock every limiter takes (pinned, moved by the
test), so refill is exact and nothing sleeps. Redis runs on 127.0.0.1:6379 with a unique key namespace per
test, deleted afterwards.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from superollama.errors import QuotaExceeded, RateLimited
from superollama.security import MemoryRateLimiter, Principal
from superollama.security.keys import ModelLimit
from superollama.security.limits import Admission, RateLimiter
from superollama.security.redis_limits import RedisRateLimiter
from superollama.security.shared_limits import SharedLimitTable, SharedMemoryRateLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = 1_800_000_000.0  # a pinned wall clock (time.time() seconds), mid-month


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@dataclass
class Subject:
    limiter: RateLimiter
    clock: Clock


@pytest.fixture(params=["memory", "shared-memory", "redis"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    clock = Clock()
    limiter: RateLimiter
    namespace = f"contract:{uuid.uuid4().hex[:10]}:"
    if request.param == "memory":
        limiter = MemoryRateLimiter(clock=clock)
    elif request.param == "shared-memory":
        limiter = SharedMemoryRateLimiter(SharedLimitTable(slots=1024), clock=clock)
    else:
        # settle_delay 0: a settlement is in Redis when settle returns (the batching has its own tests);
        # timeout 5 s: these tests check what is admitted, not how fast (the 0.5 s default and an outage
        # are tested in tests/integration/test_security_redis.py); a busy machine once kept an answer
        # past 0.5 s
        limiter = RedisRateLimiter(
            REDIS_URL, namespace=namespace, clock=clock, fail_open=False, settle_delay=0, timeout=5
        )
    try:
        yield Subject(limiter, clock)
    finally:
        await limiter.close()
        if request.param == "redis":
            redis = Redis.from_url(REDIS_URL)
            keys = [k async for k in redis.scan_iter(match=f"{namespace}*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()


def principal(**limits: object) -> Principal:
    key_id = f"key_{uuid.uuid4().hex[:8]}"
    return Principal(key_id, "contract", f"so-{key_id[4:]}", **limits)  # type: ignore[arg-type]


async def test_no_limits_admits_without_headers(subject: Subject) -> None:
    admission = await subject.limiter.admit(principal(), "m", 1000)
    assert admission.reserved_tokens == 1000 and not admission.degraded
    assert dict(admission.headers) == {}


async def test_admits_under_the_rpm_limit_counting_down(subject: Subject) -> None:
    p = principal(rpm=3)
    remaining = []
    for _ in range(3):
        admission = await subject.limiter.admit(p, "m", 0)
        assert admission.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(admission.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]


async def test_admit_soon_admits_and_refuses_as_admit_does(subject: Subject) -> None:
    """``admit_soon`` (the request path's ``admit``): the same admissions and the same refusal, raised at
    once or by the awaitable; the in-memory limiters decide every request at once (nothing to await)."""
    p = principal(rpm=3)
    remaining = []
    for _ in range(3):
        soon = subject.limiter.admit_soon(p, "m", 0)
        if not isinstance(subject.limiter, RedisRateLimiter):
            assert isinstance(soon, Admission)
        admission = soon if isinstance(soon, Admission) else await soon
        remaining.append(admission.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    with pytest.raises(RateLimited, match="3 RPM"):
        soon = subject.limiter.admit_soon(p, "m", 0)
        if not isinstance(soon, Admission):
            await soon


async def test_refuses_over_the_limit_with_retry_after_then_refills(subject: Subject) -> None:
    p = principal(rpm=3)
    for _ in range(3):
        await subject.limiter.admit(p, "m", 0)
    with pytest.raises(RateLimited) as refused:
        await subject.limiter.admit(p, "m", 0)
    assert refused.value.status == 429
    assert refused.value.retry_after == pytest.approx(20.0, abs=0.01)  # 60 s / 3 requests
    assert "3 RPM" in refused.value.message and p.prefix in refused.value.message
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"

    subject.clock.t += 19.9
    with pytest.raises(RateLimited):
        await subject.limiter.admit(p, "m", 0)  # a refusal reserves nothing: still one slot 0.1 s away
    subject.clock.t += 0.1
    await subject.limiter.admit(p, "m", 0)  # one request's worth refilled
    with pytest.raises(RateLimited):
        await subject.limiter.admit(p, "m", 0)
    subject.clock.t += 60
    for _ in range(3):  # a whole minute later the bucket is full again, and no fuller
        await subject.limiter.admit(p, "m", 0)
    with pytest.raises(RateLimited):
        await subject.limiter.admit(p, "m", 0)


async def test_tokens_per_minute_reserve_the_estimate(subject: Subject) -> None:
    p = principal(tpm=100)
    first = await subject.limiter.admit(p, "m", 60)
    assert first.headers["x-ratelimit-remaining-tokens"] == "40"
    with pytest.raises(RateLimited, match="100 TPM") as refused:
        await subject.limiter.admit(p, "m", 60)
    assert refused.value.retry_after == pytest.approx(12.0, abs=0.01)  # 20 tokens short at 100/min
    await subject.limiter.admit(p, "m", 40)


async def test_settle_soon_charges_at_once_or_returns_the_round_trip_to_await(subject: Subject) -> None:
    p = principal(tpm=100)
    reserved = await subject.limiter.admit(p, "m", 80)
    rest = subject.limiter.settle_soon(reserved, 10, cost=0.25)  # used 10 of 80, and costs $0.25
    if isinstance(subject.limiter, RedisRateLimiter):  # settle_delay 0: each settlement is a round trip
        assert rest is not None
        await rest
    else:
        assert rest is None  # in memory: settled before it returned
    again = await subject.limiter.admit(p, "m", 80)
    assert again.headers["x-ratelimit-remaining-tokens"] == "10"
    assert await subject.limiter.spent(p) == pytest.approx(0.25)
    assert subject.limiter.settle_soon(again._replace(degraded=True), 0, cost=1.0) is None
    assert await subject.limiter.spent(p) == pytest.approx(0.25)  # a degraded admission settles nothing


async def test_settlement_refunds_and_surcharges_the_difference(subject: Subject) -> None:
    p = principal(tpm=100)
    reserved = await subject.limiter.admit(p, "m", 80)
    await subject.limiter.settle(reserved, 10)  # used 10 of 80: 70 come back
    again = await subject.limiter.admit(p, "m", 80)
    assert again.headers["x-ratelimit-remaining-tokens"] == "10"
    await subject.limiter.settle(again, 130)  # used 50 more than reserved: the bucket is in debt
    with pytest.raises(RateLimited):
        await subject.limiter.admit(p, "m", 1)
    subject.clock.t += 60  # debt paid off by time: 140 tokens charged, 100 per minute
    with pytest.raises(RateLimited):
        await subject.limiter.admit(p, "m", 61)
    await subject.limiter.admit(p, "m", 60)


async def test_keys_are_independent(subject: Subject) -> None:
    a, b = principal(rpm=1), principal(rpm=1)
    await subject.limiter.admit(a, "m", 0)
    with pytest.raises(RateLimited):
        await subject.limiter.admit(a, "m", 0)
    await subject.limiter.admit(b, "m", 0)


async def test_a_per_model_limit_applies_to_its_models_only(subject: Subject) -> None:
    p = principal(rpm=10, model_limits=(ModelLimit("big-*", rpm=1),))
    await subject.limiter.admit(p, "big-70b", 0)
    with pytest.raises(RateLimited, match="on models 'big-\\*'"):
        await subject.limiter.admit(p, "big-8b", 0)
    await subject.limiter.admit(p, "small", 0)


async def test_a_reloaded_key_is_limited_by_its_new_limits_at_once(subject: Subject) -> None:
    """An admin's change reaches the limiter as a new ``Principal`` of the same key (``KeyCache.load``):
    its limits apply from its next request, whatever the limiter kept from the old one."""
    p = principal(rpm=100)
    first = await subject.limiter.admit(p, "m1", 10)
    assert (
        first.headers["x-ratelimit-limit-requests"] == "100"
        and "x-ratelimit-limit-tokens" not in first.headers
    )
    changed = dataclasses.replace(p, rpm=5, tpm=1000)
    second = await subject.limiter.admit(changed, "m1", 10)
    assert second.headers["x-ratelimit-limit-requests"] == "5"
    assert second.headers["x-ratelimit-limit-tokens"] == "1000"
    assert second.headers["x-ratelimit-remaining-tokens"] == "990"
    scoped = dataclasses.replace(changed, tpm=None, model_limits=(ModelLimit("m*", rpm=1),))
    third = await subject.limiter.admit(scoped, "m1", 10)
    assert third.headers["x-ratelimit-limit-requests"] == "1"  # the model's limit is the tighter one now
    assert "x-ratelimit-limit-tokens" not in third.headers
    with pytest.raises(RateLimited, match="on models 'm\\*': 1 RPM"):
        await subject.limiter.admit(scoped, "m2", 10)
    assert (await subject.limiter.admit(changed, "m2", 10)).headers["x-ratelimit-limit-requests"] == "5"


async def test_budgets_spend_and_refuse_once_spent(subject: Subject) -> None:
    p = principal(budget_usd=1.0)
    assert await subject.limiter.spent(p) == 0.0
    assert await subject.limiter.add_spend(p, 0.25) == pytest.approx(0.25)
    admission = await subject.limiter.admit(p, "m", 10)
    await subject.limiter.settle(admission, 10, cost=0.8)  # the request's cost is added to the spend
    assert await subject.limiter.spent(p) == pytest.approx(1.05)
    with pytest.raises(QuotaExceeded) as refused:
        await subject.limiter.admit(p, "m", 10)
    assert refused.value.status == 429 and p.prefix in refused.value.message
    assert await subject.limiter.spent(principal(budget_usd=1.0)) == 0.0  # another key spent nothing
