"""Rate limits: requests and tokens per minute, per key and per key and model; reserve, then settle.

Algorithm: GCRA (the generic cell rate algorithm, a token bucket kept as one number). Each bucket stores its
*theoretical arrival time* (TAT); a request costing ``n`` units moves it ``n x 60 s / limit`` forward and is
admitted while ``TAT - now ≤ 60 s``. Why GCRA and not a sliding window:

- one float per bucket, O(1) work and memory whatever the limit (a sliding log keeps one entry per request
  of the last minute; a windowed counter is approximate at the window edges);
- a cost of ``n`` tokens is native, and so is settlement: a refund moves the TAT back, a surcharge forward
  (a request that used more than it reserved leaves the bucket in debt, so the sustained rate holds);
- OpenAI's headers fall out of it: remaining = what fits before ``now + 60 s``, reset = ``TAT - now``;
- run atomically (a Lua script in Redis) it is exact across any number of processes.

A bucket starts full: a key with 600 rpm may send 600 requests at once, then 10 per second; over a long run
the accepted count is ``limit + elapsed x limit / 60``. A reservation larger than a bucket's whole capacity
is clamped to it (it waits for a full bucket instead of never passing), then settled at its real size.

Budgets are checked here too, in the same step (memory) or round trip (Redis), before the rate limits.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Generic, Literal, NamedTuple, Protocol, TypeVar

from superollama.errors import QuotaExceeded, RateLimited
from superollama.security.budgets import period_label
from superollama.security.keys import Principal

__all__ = [
    "EPOCH",
    "WINDOW",
    "Admission",
    "AdmitsSoon",
    "Bucket",
    "MemoryRateLimiter",
    "Plan",
    "Plans",
    "RateLimiter",
    "SettlesSoon",
    "admitted",
    "format_duration",
    "quota_error",
    "rate_limited",
    "settled_tat",
]

WINDOW = 60.0  # seconds: every limit is per minute
EPOCH = 1_700_000_000.0  # times are kept relative to this, so doubles keep sub-microsecond precision
# Slack at the exact edge of a full bucket, for float rounding: 1 % of one unit's interval, at most 1 ms.
_TOLERANCE = 0.01
_MAX_SLACK = 0.001

Kind = Literal["requests", "tokens"]


class Bucket(NamedTuple):
    """One GCRA bucket an admission charged: ``cost`` units of ``limit`` per minute. ``interval`` (seconds
    per unit) and ``slack`` follow from ``limit``; ``Plan`` works them out once per key and model."""

    key: str
    kind: Kind
    limit: int
    cost: int
    scope: str  # "key" or the model pattern of a per-model limit
    interval: float
    slack: float


def _bucket(key: str, kind: Kind, limit: int, scope: str = "key") -> Bucket:
    interval = WINDOW / limit
    return Bucket(
        key,
        kind,
        limit,
        1 if kind == "requests" else 0,
        scope,
        interval,
        min(interval * _TOLERANCE, _MAX_SLACK),
    )


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_new_tuple = tuple.__new__
_floor = math.floor


class Admission(NamedTuple):
    """What ``admit`` let through: hand it back to ``settle`` when the request ends.

    ``headers`` are the ``x-ratelimit-*`` headers for the response; ``degraded`` means the limiter's store
    was unreachable and the request was admitted unchecked (fail open). A tuple, made once per request: a
    quarter of the time of a frozen dataclass."""

    model: str
    principal: Principal | None = None
    reserved_tokens: int = 0
    buckets: tuple[Bucket, ...] = ()
    headers: Mapping[str, str] = _NO_HEADERS
    degraded: bool = False


K = TypeVar("K")

_HEADER_NAMES: dict[str, tuple[str, str, str]] = {
    kind: (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}")
    for kind in ("requests", "tokens")
}


class Plan(Generic[K]):
    """What every request of ``principal`` on ``model`` charges, worked out once: the buckets (a request
    costs 1 of each requests bucket; ``charge`` fills in the tokens), their keys in the limiter's store
    (``keys``, in the buckets' order), and the fixed parts of the ``x-ratelimit-*`` headers.

    A plan belongs to one ``Principal`` object: a key reload makes new ones, so changed limits get a new
    plan (see ``Plans``)."""

    __slots__ = ("_kinds", "_tokens", "buckets", "keys", "model", "principal")

    def __init__(self, principal: Principal, model: str, store_key: Callable[[str], K]) -> None:
        self.principal = principal
        self.model = model
        base = f"{{{principal.key_id}}}"  # a Redis hash tag: every bucket of a key in one cluster slot
        out: list[Bucket] = []
        if principal.rpm:
            out.append(_bucket(f"{base}:rpm", "requests", principal.rpm))
        if principal.tpm:
            out.append(_bucket(f"{base}:tpm", "tokens", principal.tpm))
        scoped = principal.model_limit(model)
        if scoped is not None:
            if scoped.rpm:
                out.append(_bucket(f"{base}:m:{scoped.pattern}:rpm", "requests", scoped.rpm, scoped.pattern))
            if scoped.tpm:
                out.append(_bucket(f"{base}:m:{scoped.pattern}:tpm", "tokens", scoped.tpm, scoped.pattern))
        self.buckets: tuple[Bucket, ...] = tuple(out)
        self.keys: tuple[K, ...] = tuple(store_key(b.key) for b in out)
        self._tokens = any(b.kind == "tokens" for b in out)
        # per kind present, in the headers' order: the three names, then (index, limit, its text, interval,
        # the window and the slack) of each bucket of that kind
        self._kinds = tuple(
            (
                *_HEADER_NAMES[kind],
                tuple(
                    (i, b.limit, str(b.limit), b.interval, WINDOW + b.slack)
                    for i, b in enumerate(out)
                    if b.kind == kind
                ),
            )
            for kind in ("requests", "tokens")
            if any(b.kind == kind for b in out)
        )

    def charge(self, estimated_tokens: int) -> tuple[Bucket, ...]:
        """The buckets with this request's costs: 1 request, the estimate in tokens (at most a bucket's
        whole capacity: a larger one waits for a full bucket instead of never passing)."""
        if not self._tokens:
            return self.buckets
        tokens = max(0, int(estimated_tokens))
        out = []
        for bucket in self.buckets:
            if bucket.kind == "requests":
                out.append(bucket)
            else:  # made as the tuple it is: a third of the time of ``Bucket(...)``, a tenth of ``_replace``
                key, kind, limit, _, scope, interval, slack = bucket
                cost = tokens if tokens < limit else limit
                out.append(_new_tuple(Bucket, (key, kind, limit, cost, scope, interval, slack)))
        return tuple(out)

    def headers(self, tats: Sequence[float], now: float) -> dict[str, str]:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` from the buckets' TATs (in the plan's
        order); per kind, the most constraining bucket (the least remaining) speaks."""
        headers: dict[str, str] = {}
        for limit_name, remaining_name, reset_name, members in self._kinds:
            best = -1
            text = ""
            wait = 0.0
            for i, limit, limit_text, interval, window in members:
                tat = tats[i]
                ahead = tat - now if tat > now else 0.0
                remaining = _floor((window - ahead) / interval)
                if remaining > limit:
                    remaining = limit
                elif remaining < 0:
                    remaining = 0
                if best < 0 or remaining < best:
                    best, text, wait = remaining, limit_text, ahead
            headers[limit_name] = text
            headers[remaining_name] = str(best)
            headers[reset_name] = format_duration(wait)
        return headers


class Plans(Generic[K]):
    """A limiter's plans by principal and model, at most ``size`` of them (all forgotten when full: they
    are rebuilt on the next request, a few microseconds each).

    Looked up by the principal object's identity, which is cheaper than hashing its value and is what
    makes a reload take effect: ``KeyCache.load`` makes new ``Principal`` objects, so an admin's change of a
    key's limits misses the old plans. A plan holds its principal, so an id in the table is never reused
    by another object while the plan is there."""

    def __init__(self, store_key: Callable[[str], K], size: int = 1024) -> None:
        self._store_key = store_key
        self._size = size
        self._plans: dict[tuple[int, str], Plan[K]] = {}

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, principal: Principal, model: str) -> Plan[K]:
        slot = (id(principal), model)
        plan = self._plans.get(slot)
        if plan is not None and plan.principal is principal:
            return plan
        plan = Plan(principal, model, self._store_key)
        if len(self._plans) >= self._size:
            self._plans.clear()
        self._plans[slot] = plan
        return plan


def _same(key: str) -> str:
    return key


def spend_key(principal: Principal, now: float) -> tuple[str, int]:
    """Store key of the principal's spend in its current budget period, and its lifetime in seconds."""
    label, ttl = period_label(principal.budget_period, now + EPOCH)
    return f"{{{principal.key_id}}}:spend:{label}", ttl


def settled_tat(tat: float | None, now: float, delta: int, interval: float) -> float | None:
    """A bucket's TAT once ``delta`` more tokens are charged (a refund when negative); None when there
    is nothing to change (no difference, or a refund to a bucket that is full again: ``tat`` None)."""
    if delta == 0 or (tat is None and delta < 0):
        return None
    if tat is None:
        base = now  # a surcharge on a bucket that was full again
    else:
        base = max(tat, now) if delta > 0 else tat
    return base + delta * interval


_MILLISECONDS = tuple(f"{n}ms" for n in range(1001))  # every request's reset headers: made once


def format_duration(seconds: float) -> str:
    """Like OpenAI's reset headers (Go durations): ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return _MILLISECONDS[max(1, math.ceil(seconds * 1000))]
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


def rate_limited(plan: Plan[K], buckets: Sequence[Bucket], tats: Sequence[float], now: float) -> RateLimited:
    """The 429 for a refused admission of ``buckets`` (``plan``'s, charged): which limit, when to retry,
    and the headers."""
    worst: tuple[float, Bucket] | None = None
    for bucket, tat in zip(buckets, tats, strict=True):
        wait = max(tat, now) + bucket.cost * bucket.interval - WINDOW - now
        if wait > bucket.slack and (worst is None or wait > worst[0]):
            worst = (wait, bucket)
    wait, bucket = worst if worst is not None else (0.0, buckets[0])
    per = "RPM" if bucket.kind == "requests" else "TPM"
    scope = "" if bucket.scope == "key" else f" on models {bucket.scope!r}"
    message = (
        f"Rate limit reached for API key {plan.principal.prefix}{scope}: {bucket.limit} {per}. "
        f"Please try again in {format_duration(wait)}."
    )
    return RateLimited(message, retry_after=wait, headers=plan.headers(tats, now))


def quota_error(principal: Principal, spent: float) -> QuotaExceeded:
    return QuotaExceeded(
        f"API key {principal.prefix} has used its {principal.budget_period} budget "
        f"(${spent:.4f} of ${principal.budget_usd:.2f}). Raise the budget or wait for the next period."
    )


class RateLimiter(Protocol):
    """Admission control for one request. ``admit`` checks the budget, then every bucket, and reserves the
    estimate (``RateLimited``/``QuotaExceeded`` when refused); ``settle`` charges the difference between
    the actual and the reserved tokens and adds the request's cost to the key's spend.

    ``settle_soon`` is ``settle`` for the request path: it charges what it can at once, without waiting,
    and returns None when that was all (the common case: in memory, or owed until the limiter's next
    batched round trip), else an awaitable that sends the rest. The gateway settles every request this
    way: a task to await a settlement that had nothing to wait for cost more than the settlement.

    ``admit_soon`` is ``admit`` for the request path, the same way round: the admission when it is decided
    without waiting (in memory, or from a key's local allowance), else an awaitable of it. The chat path
    then enters no coroutine of the limiter's (nor of ``Security``'s) on most requests."""

    async def admit(self, principal: Principal, model: str, estimated_tokens: int) -> Admission: ...
    def admit_soon(
        self, principal: Principal, model: str, estimated_tokens: int
    ) -> Admission | Awaitable[Admission]: ...
    async def settle(self, admission: Admission, actual_tokens: int, *, cost: float = 0.0) -> None: ...
    def settle_soon(
        self, admission: Admission, actual_tokens: int, *, cost: float = 0.0
    ) -> Awaitable[None] | None: ...
    async def add_spend(self, principal: Principal, amount: float) -> float: ...
    async def spent(self, principal: Principal) -> float: ...
    async def close(self) -> None: ...


class AdmitsSoon(ABC):
    """A limiter's ``admit``, made of its ``admit_soon`` (see ``RateLimiter``)."""

    @abstractmethod
    def admit_soon(
        self, principal: Principal, model: str, estimated_tokens: int
    ) -> Admission | Awaitable[Admission]: ...

    async def admit(self, principal: Principal, model: str, estimated_tokens: int) -> Admission:
        return await admitted(self.admit_soon(principal, model, estimated_tokens))


async def admitted(soon: Admission | Awaitable[Admission]) -> Admission:
    """What an ``admit_soon`` handed back, as the admission (awaited when it is an awaitable)."""
    return soon if isinstance(soon, Admission) else await soon


class SettlesSoon(ABC):
    """A limiter's ``settle``, made of its ``settle_soon`` (see ``RateLimiter``)."""

    @abstractmethod
    def settle_soon(
        self, admission: Admission, actual_tokens: int, *, cost: float = 0.0
    ) -> Awaitable[None] | None: ...

    async def settle(self, admission: Admission, actual_tokens: int, *, cost: float = 0.0) -> None:
        rest = self.settle_soon(admission, actual_tokens, cost=cost)
        if rest is not None:
            await rest


class MemoryRateLimiter(AdmitsSoon, SettlesSoon):
    """The single-process limiter: GCRA buckets and spend counters in dicts. ``clock`` returns
    ``time.time()`` seconds (injectable for tests)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, sweep_every: int = 10_000) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._spend: dict[str, tuple[str, float]] = {}  # key id → (spend key of its period, USD)
        self._sweep_every = sweep_every
        self._since_sweep = 0
        self._plans: Plans[str] = Plans(_same)

    def _now(self) -> float:
        return self._clock() - EPOCH

    def admit_soon(self, principal: Principal, model: str, estimated_tokens: int) -> Admission:
        now = self._now()
        if principal.budget_usd is not None:
            spent = self._spent(principal, now)
            if spent >= principal.budget_usd:
                raise quota_error(principal, spent)
        plan = self._plans.get(principal, model)
        buckets = plan.charge(estimated_tokens)
        if not buckets:
            return Admission(model, principal, max(0, estimated_tokens))
        tats = [self._tats.get(key, now) for key in plan.keys]
        new = [max(tat, now) + b.cost * b.interval for b, tat in zip(buckets, tats, strict=True)]
        if any(n - now > WINDOW + b.slack for b, n in zip(buckets, new, strict=True)):
            raise rate_limited(plan, buckets, tats, now)
        for key, tat in zip(plan.keys, new, strict=True):
            self._tats[key] = tat
        self._maybe_sweep(now)
        return Admission(model, principal, max(0, estimated_tokens), buckets, plan.headers(new, now))

    def settle_soon(self, admission: Admission, actual_tokens: int, *, cost: float = 0.0) -> None:
        if admission.degraded:
            return
        now = self._now()
        for bucket in admission.buckets:
            delta = max(0, actual_tokens) - bucket.cost if bucket.kind == "tokens" else 0
            new = settled_tat(self._tats.get(bucket.key), now, delta, bucket.interval)
            if new is None:
                continue
            if new <= now:
                self._tats.pop(bucket.key, None)
            else:
                self._tats[bucket.key] = new
        if cost > 0 and admission.principal is not None:
            self._add_spend(admission.principal, cost)

    async def add_spend(self, principal: Principal, amount: float) -> float:
        return self._add_spend(principal, amount)

    def _add_spend(self, principal: Principal, amount: float) -> float:
        key, _ = spend_key(principal, self._now())
        current = self._spend.get(principal.key_id)
        total = (current[1] if current is not None and current[0] == key else 0.0) + amount
        self._spend[principal.key_id] = (key, total)
        return total

    async def spent(self, principal: Principal) -> float:
        return self._spent(principal, self._now())

    def _spent(self, principal: Principal, now: float) -> float:
        current = self._spend.get(principal.key_id)
        key, _ = spend_key(principal, now)
        return current[1] if current is not None and current[0] == key else 0.0

    def _maybe_sweep(self, now: float) -> None:
        """Forget full buckets (TAT in the past) now and then, so idle keys cost no memory."""
        self._since_sweep += 1
        if self._since_sweep < self._sweep_every:
            return
        self._since_sweep = 0
        self._tats = {k: v for k, v in self._tats.items() if v > now}

    async def close(self) -> None:
        self._tats.clear()
        self._spend.clear()
