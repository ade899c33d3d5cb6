"""The Redis limiter's local allowance (``security/redis_lease.py``) against the real Redis on
127.0.0.1:6379 (a namespace per test, deleted afterwards), with a pinned clock: a busy key with large
limits admits from the allowance without touching its buckets, the headers still count down, what is left
goes back to Redis, the limit stays exact to the request, and small limits or a budget get none. The next
allowance is taken ahead, in the background: a steady key's requests never wait for Redis, and where the
buckets have no room for one, requests go to Redis one by one without asking again."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis
from tests.waiting import wait_until

from superollama.errors import RateLimited
from superollama.security import Principal
from superollama.security.limits import EPOCH, WINDOW, Admission
from superollama.security.redis_lease import LEASE_LOW_AGE, LEASE_MIN, LEASE_REQUESTS, LEASE_SHARE, LEASE_TTL
from superollama.security.redis_limits import RedisRateLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = 1_800_000_000.0


def principal(**limits: object) -> Principal:
    key_id = f"key_{uuid.uuid4().hex[:8]}"
    return Principal(key_id, "lease", f"so-{key_id[4:]}", **limits)  # type: ignore[arg-type]


@pytest.fixture
async def made() -> AsyncIterator[Callable[..., tuple[RedisRateLimiter, str]]]:
    namespaces: list[str] = []
    limiters: list[RedisRateLimiter] = []

    def make(monotonic: Callable[[], float] | None = None) -> tuple[RedisRateLimiter, str]:
        namespace = f"lease:{uuid.uuid4().hex[:10]}:"
        extra = {"monotonic": monotonic} if monotonic is not None else {}
        limiter = RedisRateLimiter(REDIS_URL, namespace=namespace, clock=lambda: T0, fail_open=False, **extra)
        namespaces.append(namespace)
        limiters.append(limiter)
        return limiter, namespace

    yield make
    redis = Redis.from_url(REDIS_URL)
    for limiter in limiters:
        await limiter.close()
    for namespace in namespaces:
        keys = [k async for k in redis.scan_iter(match=f"{namespace}*")]
        if keys:
            await redis.delete(*keys)
    await redis.aclose()


async def _ahead(namespace: str, p: Principal, bucket: str) -> float:
    """How far the bucket's TAT lies ahead of the pinned now, in seconds (0 when it has none)."""
    redis = Redis.from_url(REDIS_URL)
    raw = await redis.get(f"{namespace}{{{p.key_id}}}:{bucket}")
    await redis.aclose()
    return 0.0 if raw is None else float(raw) - (T0 - EPOCH)


async def test_a_busy_key_admits_from_its_allowance_and_gives_back_the_rest(
    made: Callable[..., tuple[RedisRateLimiter, str]],
) -> None:
    ticks = itertools.count()
    limiter, ns = made(monotonic=lambda: next(ticks) * 1e-6)  # frozen well inside the allowance's life
    rpm = 100_000
    p = principal(rpm=rpm)
    interval = WINDOW / rpm
    grant = min(rpm // LEASE_SHARE, LEASE_REQUESTS)
    first = await limiter.admit(p, "m", 10)
    assert await _ahead(ns, p, "rpm") == pytest.approx((1 + grant) * interval, abs=1e-6)  # charged up front
    remaining = [int(first.headers["x-ratelimit-remaining-requests"])]
    for _ in range(9):
        admission = await limiter.admit(p, "m", 10)
        remaining.append(int(admission.headers["x-ratelimit-remaining-requests"]))
    assert await _ahead(ns, p, "rpm") == pytest.approx(
        (1 + grant) * interval, abs=1e-6
    )  # no round trip since
    assert remaining == list(range(rpm - 1, rpm - 11, -1))  # as an exact limiter would say
    await limiter.flush()  # gives back what is left of the allowance
    assert await _ahead(ns, p, "rpm") == pytest.approx(10 * interval, abs=1e-6)


async def test_the_limit_stays_exact_to_the_request(
    made: Callable[..., tuple[RedisRateLimiter, str]],
) -> None:
    limiter, ns = made()
    rpm = LEASE_MIN * LEASE_SHARE  # the smallest allowance
    p = principal(rpm=rpm)
    for _ in range(rpm):
        await limiter.admit(p, "m", 0)
    with pytest.raises(RateLimited):
        await limiter.admit(p, "m", 0)
    await limiter.flush()
    assert await _ahead(ns, p, "rpm") == pytest.approx(WINDOW, abs=1e-4)  # float sums of 8,000 charges


async def test_small_limits_and_budgets_take_no_allowance(
    made: Callable[..., tuple[RedisRateLimiter, str]],
) -> None:
    limiter, ns = made()
    small = principal(rpm=LEASE_MIN * LEASE_SHARE - 1)
    budgeted = principal(rpm=100 * LEASE_SHARE, budget_usd=5.0)
    for p in (small, budgeted):
        await limiter.admit(p, "m", 0)
        assert await _ahead(ns, p, "rpm") == pytest.approx(WINDOW / p.rpm, abs=1e-6)  # this request only


async def test_concurrent_requests_share_one_refill(
    made: Callable[..., tuple[RedisRateLimiter, str]],
) -> None:
    """Requests that find no allowance while one is being taken wait for it rather than each taking their
    own (which would give back the previous one at every turn)."""
    ticks = itertools.count()
    limiter, ns = made(monotonic=lambda: next(ticks) * 1e-6)
    rpm = 100_000
    p = principal(rpm=rpm)
    grant = min(rpm // LEASE_SHARE, LEASE_REQUESTS)
    admitted = await asyncio.gather(*(limiter.admit(p, "m", 0) for _ in range(20)))
    assert len(admitted) == 20
    assert await _ahead(ns, p, "rpm") == pytest.approx((1 + grant) * WINDOW / rpm, abs=1e-6)  # one trip
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in admitted)
    assert remaining == list(range(rpm - 20, rpm))


async def test_admit_soon_decides_from_the_allowance_without_a_coroutine(
    made: Callable[..., tuple[RedisRateLimiter, str]],
) -> None:
    """The request path's ``admit_soon``: the first request of a key is a round trip to await (it takes the
    allowance); the next ones are admitted at once, counting down as ``admit`` would; a key with no
    allowance (a small limit) is a round trip every time."""
    ticks = itertools.count()
    limiter, ns = made(monotonic=lambda: next(ticks) * 1e-6)
    rpm = 100_000
    p = principal(rpm=rpm)
    first = limiter.admit_soon(p, "m", 0)
    assert not isinstance(first, Admission)
    remaining = [int((await first).headers["x-ratelimit-remaining-requests"])]
    for _ in range(5):
        soon = limiter.admit_soon(p, "m", 0)
        assert isinstance(soon, Admission) and soon.principal is p
        remaining.append(int(soon.headers["x-ratelimit-remaining-requests"]))
    assert remaining == list(range(rpm - 1, rpm - 7, -1))
    small = principal(rpm=LEASE_MIN * LEASE_SHARE - 1)
    for _ in range(2):
        trip = limiter.admit_soon(small, "m", 0)
        assert not isinstance(trip, Admission)
        await trip
    assert await _ahead(ns, small, "rpm") == pytest.approx(2 * WINDOW / small.rpm, abs=1e-6)


async def _evalsha_calls() -> int:
    redis = Redis.from_url(REDIS_URL)
    stats = await redis.info("commandstats")
    await redis.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def _at_least(count: Awaitable[int], n: int) -> bool:
    return await count >= n


async def _ahead_is(namespace: str, p: Principal, seconds: float) -> bool:
    return abs(await _ahead(namespace, p, "rpm") - seconds) < 1e-6


async def test_the_next_allowance_is_taken_ahead_so_no_request_waits(
    made: Callable[..., tuple[RedisRateLimiter, str]],
) -> None:
    """Past three quarters of an allowance, the next is taken in the background: after the first, no
    admission is a round trip, the headers count down as an exact limiter's, and once what is left goes
    back, the bucket holds exactly the requests admitted."""
    ticks = itertools.count()
    limiter, ns = made(monotonic=lambda: next(ticks) * 1e-6)  # time stands still: only use runs it down
    rpm = 100_000
    p = principal(rpm=rpm)
    grant = min(rpm // LEASE_SHARE, LEASE_REQUESTS)
    first = limiter.admit_soon(p, "m", 0)
    assert not isinstance(first, Admission)
    remaining = [int((await first).headers["x-ratelimit-remaining-requests"])]
    admitted = 3 * grant
    for _ in range(admitted - 1):
        soon = limiter.admit_soon(p, "m", 0)
        assert isinstance(soon, Admission), "a request waited for Redis"
        remaining.append(int(soon.headers["x-ratelimit-remaining-requests"]))
        # requests 1 ms apart: a refill (a loopback round trip) lands well within the 16 requests that the
        # quarter of an allowance left when it is asked for lasts
        await asyncio.sleep(0.001)
    assert remaining == list(range(rpm - 1, rpm - 1 - admitted, -1))
    await limiter.flush()
    assert await _ahead(ns, p, "rpm") == pytest.approx(admitted * WINDOW / rpm, abs=1e-6)


async def test_an_allowance_late_in_its_life_is_followed_ahead_and_what_is_left_goes_back(
    made: Callable[..., tuple[RedisRateLimiter, str]],
) -> None:
    now = [0.0]
    limiter, ns = made(monotonic=lambda: now[0])
    rpm = 100_000
    p = principal(rpm=rpm)
    grant = min(rpm // LEASE_SHARE, LEASE_REQUESTS)
    interval = WINDOW / rpm
    await limiter.admit(p, "m", 0)  # takes the first allowance
    now[0] = LEASE_LOW_AGE  # three quarters of its life gone, most of it left
    soon = limiter.admit_soon(p, "m", 0)
    assert isinstance(soon, Admission)
    # the second allowance arrives, and the rest of the first goes back with the next settlement
    await wait_until(lambda: _ahead_is(ns, p, (2 + grant) * interval), what="the second allowance")
    now[0] = LEASE_LOW_AGE + LEASE_TTL / 10  # the first would have expired by now; the second has not
    assert isinstance(limiter.admit_soon(p, "m", 0), Admission)
    await limiter.flush()
    assert await _ahead(ns, p, "rpm") == pytest.approx(3 * interval, abs=1e-6)


async def test_with_no_room_for_an_allowance_ahead_requests_go_to_redis_exactly_and_it_is_not_asked_again(
    made: Callable[..., tuple[RedisRateLimiter, str]],
) -> None:
    """Room for ten requests: the first takes itself and an allowance (room for one more left); the next
    allowance is refused, once; the request after the allowance is a round trip that takes the last room,
    and the one after that is refused. Ten admitted, as an exact limiter would."""
    ticks = itertools.count()
    limiter, ns = made(monotonic=lambda: next(ticks) * 1e-6)
    rpm = LEASE_MIN * LEASE_SHARE
    grant = LEASE_MIN
    p = principal(rpm=rpm)
    interval = WINDOW / rpm
    redis = Redis.from_url(REDIS_URL)
    await redis.set(f"{ns}{{{p.key_id}}}:rpm", repr(T0 - EPOCH + WINDOW - 10 * interval))
    await redis.aclose()
    before = await _evalsha_calls()
    for _ in range(1 + grant):
        await limiter.admit(p, "m", 0)

    async def scripts() -> int:
        return await _evalsha_calls() - before

    await wait_until(lambda: _at_least(scripts(), 2), what="the allowance asked ahead")
    assert await scripts() == 2  # the first admission and one allowance asked ahead (refused), once
    await limiter.admit(p, "m", 0)  # the tenth: a round trip, exact
    with pytest.raises(RateLimited):
        await limiter.admit(p, "m", 0)
    await limiter.flush()
    assert await _ahead(ns, p, "rpm") == pytest.approx(WINDOW, abs=1e-6)
