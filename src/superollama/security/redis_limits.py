"""The rate limiter shared by every gateway process: GCRA buckets and spend counters in Redis.

One round trip per admission: one ``EVALSHA`` of a Lua script that checks the key's budget, then every
bucket, and charges them all or none (Redis runs a script atomically, so the count is exact across any number
of processes). The script is sent once per server (``SCRIPT LOAD`` on the first ``NOSCRIPT``). Settlement is
one more ``EVALSHA`` (token differences + spend) per key every ``settle_delay`` seconds, however many
requests it settles. Time comes from Redis's own clock (``TIME``), so replicas with skewed clocks agree;
tests may inject a clock instead. The commands go through ``resp.RespClient``, pipelined on one connection.

A busy key with large limits admits its requests without a round trip, from a small allowance charged in
Redis along with an admission and taken ahead in the background before it runs out (``redis_lease``: at
most 0.1 % of a limit over an exact limiter, and 0.2 % under it, for at most 60 ms plus
``settle_delay``). Smaller limits (under 8,000 rpm), and keys with a budget, take the round trip every
time.

When Redis cannot be reached: ``fail_open`` admits the request unchecked (``Admission.degraded``), otherwise
``Unavailable`` (503). Either way the outage is logged once (then at most once a minute while it lasts),
Redis is not tried again for ``retry_interval`` seconds, and the client reconnects on its own afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from superollama.errors import Unavailable
from superollama.security.keys import Principal
from superollama.security.limits import (
    EPOCH,
    WINDOW,
    Admission,
    AdmitsSoon,
    Bucket,
    Plan,
    Plans,
    SettlesSoon,
    quota_error,
    rate_limited,
    spend_key,
)
from superollama.security.redis_lease import LEASE_TTL, Allowance, grant_for
from superollama.security.redis_outage import Outage
from superollama.security.resp import NoScript, RespClient, RespError

__all__ = ["RedisRateLimiter"]

log = logging.getLogger("superollama.security")

_FAILURES = (RespError, OSError, TimeoutError)
_COMMON = f"""
local window = {WINDOW!r}
local tol, max_slack = 0.01, 0.001
local function fmt(x) return string.format('%.17g', x) end
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = (tonumber(t[1]) - {int(EPOCH)}) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
"""

# KEYS[1] spend key, KEYS[2..] bucket keys; ARGV[1] now or '', ARGV[2] budget or '', then limit, cost per
# bucket. Returns {0 admitted | 1 rate limited, now, TAT per bucket…} or {2 over budget, now, spent}.
ADMIT_LUA = (
    _COMMON
    + """
if ARGV[2] ~= '' then
  local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
  if spent >= tonumber(ARGV[2]) then return {2, fmt(now), fmt(spent)} end
end
local n = #KEYS - 1
local tats, news, refused = {}, {}, false
for i = 1, n do
  local interval = window / tonumber(ARGV[1 + 2 * i])
  local raw = redis.call('GET', KEYS[i + 1])
  local tat = now
  if raw then tat = tonumber(raw) end
  tats[i] = tat
  news[i] = math.max(tat, now) + tonumber(ARGV[2 + 2 * i]) * interval
  if news[i] - now > window + math.min(interval * tol, max_slack) then refused = true end
end
local out = {0, fmt(now)}
if refused then
  out[1] = 1
  for i = 1, n do out[i + 2] = fmt(tats[i]) end
else
  for i = 1, n do
    redis.call('SET', KEYS[i + 1], fmt(news[i]), 'PX', math.ceil((news[i] - now) * 1000) + 1000)
    out[i + 2] = fmt(news[i])
  end
end
return out
"""
)

# KEYS[1] spend key, KEYS[2..] token bucket keys; ARGV[1] now or '', ARGV[2] cost in USD, ARGV[3] the spend
# counter's lifetime (0: forever), then limit, token difference per bucket. Returns the new spend or ''.
SETTLE_LUA = (
    _COMMON
    + """
for i = 1, #KEYS - 1 do
  local interval = window / tonumber(ARGV[2 + 2 * i])
  local delta = tonumber(ARGV[3 + 2 * i])
  local raw = redis.call('GET', KEYS[i + 1])
  if raw or delta > 0 then
    local tat = now
    if raw then tat = tonumber(raw) end
    if delta > 0 then tat = math.max(tat, now) end
    local new = tat + delta * interval
    if new <= now then
      redis.call('DEL', KEYS[i + 1])
    else
      redis.call('SET', KEYS[i + 1], fmt(new), 'PX', math.ceil((new - now) * 1000) + 1000)
    end
  end
end
if tonumber(ARGV[2]) > 0 then
  local spent = redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
  if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
  return spent
end
return ''
"""
)


class _Script:
    """A Lua script called by SHA; loaded into the server the first time it answers ``NOSCRIPT``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: RespClient, keys: Sequence[str], args: Sequence[str]) -> Any:
        try:
            return await client.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScript:
            await client.call("SCRIPT", "LOAD", self.source)
            return await client.call("EVALSHA", self.sha, len(keys), *keys, *args)


class _Owed:
    """What one key owes since the last settlement: token differences per bucket, and USD."""

    __slots__ = ("cost", "principal", "tokens")

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.tokens: dict[tuple[str, int], int] = {}  # (bucket key, limit) → tokens
        self.cost = 0.0

    def add(self, deltas: Iterable[tuple[Bucket, int]], cost: float) -> _Owed:
        for bucket, delta in deltas:
            self.add_tokens(bucket, delta)
        self.cost += cost
        return self

    def add_tokens(self, bucket: Bucket, delta: int) -> None:
        slot = (bucket.key, bucket.limit)
        self.tokens[slot] = self.tokens.get(slot, 0) + delta


class RedisRateLimiter(AdmitsSoon, SettlesSoon):
    """``RateLimiter`` on Redis (``redis_url``), exact across processes. ``clock``: None uses Redis's clock
    (production); a function of ``time.time()`` seconds pins it (tests)."""

    def __init__(
        self,
        url: str,
        *,
        fail_open: bool = True,
        timeout: float = 0.5,
        retry_interval: float = 1.0,
        namespace: str = "so:",
        clock: Callable[[], float] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        settle_delay: float = 0.05,
        lease: bool = True,
    ) -> None:
        """``lease``: admit a busy key's requests from a local allowance (see ``redis_lease``)."""
        self._redis = RespClient(url, timeout=timeout)
        self._fail_open = fail_open
        self._ns = namespace
        self._clock = clock
        self._outage = Outage(monotonic, retry_interval, fail_open)
        self._admit = _Script(ADMIT_LUA)
        self._settle = _Script(SETTLE_LUA)
        self._settle_delay = settle_delay
        self._owed: dict[str, _Owed] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self._monotonic = monotonic
        self._lease = lease
        self._allowances: dict[tuple[str, ...], Allowance] = {}  # by the buckets' keys
        self._refills: dict[tuple[str, ...], asyncio.Future[None]] = {}  # allowances being taken
        self._ahead: set[asyncio.Task[None]] = set()  # allowances being taken ahead, in the background
        self._plans: Plans[str] = Plans(self._store_key)

    def _store_key(self, key: str) -> str:
        return self._ns + key

    @property
    def degraded(self) -> bool:
        """Whether Redis is known to be unreachable right now."""
        return self._outage.since is not None

    def _wall(self) -> float:
        return self._clock() if self._clock is not None else time.time()

    def _now_arg(self) -> str:
        return "" if self._clock is None else repr(self._clock() - EPOCH)

    def _spend_key(self, principal: Principal, *, needed: bool = True) -> tuple[str, int]:
        """The key's spend counter this period; when the script will not touch it (no budget to check,
        no cost to add), a placeholder in the same hash slot, without working out the period."""
        if not needed:
            return f"{self._ns}{{{principal.key_id}}}:spend", 0
        key, ttl = spend_key(principal, self._wall() - EPOCH)
        return self._ns + key, ttl

    def admit_soon(
        self, principal: Principal, model: str, estimated_tokens: int
    ) -> Admission | Awaitable[Admission]:
        """At once when no bucket applies, when Redis is known to be down, or from the key's allowance;
        else the round trip's coroutine."""
        reserved = max(0, int(estimated_tokens))
        plan = self._plans.get(principal, model)
        buckets = plan.charge(reserved)
        if not buckets and principal.budget_usd is None:
            return Admission(model, principal, reserved)
        if self._outage.skip():
            return self._unchecked(model, principal, reserved)
        if not (self._lease and principal.budget_usd is None and buckets):
            return self._admit_in_redis(model, plan, reserved, buckets, None)
        headers = self._from_allowance(plan.keys, plan, buckets)
        if headers is not None:
            return Admission(model, principal, reserved, buckets, headers)
        return self._admit_leased(model, plan, reserved, buckets)

    async def _admit_leased(
        self, model: str, plan: Plan[str], reserved: int, buckets: tuple[Bucket, ...]
    ) -> Admission:
        """The key's allowance is empty (or gone): wait for a refill in flight, else take one."""
        principal = plan.principal
        slot = plan.keys
        headers = None
        if (pending := self._refills.get(slot)) is not None:
            await asyncio.shield(pending)  # one refill at a time per key: wait for it, then take from it
            headers = self._from_allowance(slot, plan, buckets)
        if headers is not None:
            return Admission(model, principal, reserved, buckets, headers)
        grant = grant_for(buckets)
        if grant is None or slot in self._refills:
            return await self._admit_in_redis(model, plan, reserved, buckets, None)
        refill = self._refills[slot] = asyncio.get_running_loop().create_future()
        try:
            return await self._admit_in_redis(model, plan, reserved, buckets, grant)
        finally:
            del self._refills[slot]
            refill.set_result(None)

    def _from_allowance(
        self, slot: tuple[str, ...], plan: Plan[str], buckets: tuple[Bucket, ...]
    ) -> dict[str, str] | None:
        """The headers of an admission from the key's allowance, or None (none, used up, or expired)."""
        allowance = self._allowances.get(slot)
        if allowance is None:
            return None
        age = self._monotonic() - allowance.taken_at
        if age >= LEASE_TTL:
            self._return(slot, allowance)
            return None
        headers = allowance.take(plan, buckets, age)
        if allowance.due and slot not in self._refills:
            allowance.ahead = True  # (``due`` is worked out again by the next take)
            self._take_ahead(plan, buckets)
        return headers

    def _take_ahead(self, plan: Plan[str], buckets: tuple[Bucket, ...]) -> None:
        """Take the key's next allowance in the background, so that no request waits for it. Requests
        that find the current one used up meanwhile wait for this one (``_refills``), as for any refill."""
        grant = grant_for(buckets)
        if grant is None:
            return
        loop = asyncio.get_running_loop()
        refill = self._refills[plan.keys] = loop.create_future()
        task = loop.create_task(self._grant_ahead(plan, buckets, grant, refill))
        self._ahead.add(task)
        task.add_done_callback(self._ahead.discard)

    async def _grant_ahead(
        self,
        plan: Plan[str],
        buckets: tuple[Bucket, ...],
        grant: tuple[int, ...],
        refill: asyncio.Future[None],
    ) -> None:
        """The allowance alone, charged in Redis; nothing when the buckets have no room for it (requests
        then go to Redis one by one, exactly, as without an allowance)."""
        try:
            out = await self._call_admit(plan, buckets, grant, alone=True)
        except _FAILURES as exc:
            self._outage.failed(exc)
        else:
            self._outage.recovered()
            if int(out[0]) == 0:
                self._keep(plan, buckets, list(grant), [float(x) for x in out[2:]], float(out[1]))
        finally:
            del self._refills[plan.keys]
            refill.set_result(None)

    async def _admit_in_redis(
        self,
        model: str,
        plan: Plan[str],
        reserved: int,
        buckets: tuple[Bucket, ...],
        grant: tuple[int, ...] | None,
    ) -> Admission:
        principal = plan.principal
        try:
            out = await self._call_admit(plan, buckets, grant)
            if grant is not None and int(out[0]) == 1:  # no room for an allowance: the request alone
                grant = None
                out = await self._call_admit(plan, buckets, None)
        except _FAILURES as exc:
            self._outage.failed(exc)
            return self._unchecked(model, principal, reserved)
        self._outage.recovered()
        code, now = int(out[0]), float(out[1])
        if code == 2:
            raise quota_error(principal, float(out[2]))
        tats = [float(x) for x in out[2:]]
        if code == 1:
            raise rate_limited(plan, buckets, tats, now)
        if grant is not None:
            self._keep(plan, buckets, list(grant), tats, now)
            tats = [tat - g * b.interval for tat, g, b in zip(tats, grant, buckets, strict=True)]
        return Admission(model, principal, reserved, buckets, plan.headers(tats, now))

    async def _call_admit(
        self, plan: Plan[str], buckets: Sequence[Bucket], grant: Sequence[int] | None, *, alone: bool = False
    ) -> Any:
        """One admission script: the request's ``buckets``, plus an allowance of ``grant`` units, or the
        allowance ``alone`` (taken ahead: the request was admitted from the previous one)."""
        principal = plan.principal
        spend = self._spend_key(principal, needed=principal.budget_usd is not None)[0]
        keys = [spend, *plan.keys]
        budget = "" if principal.budget_usd is None else repr(principal.budget_usd)
        if grant is None:
            costs = [b.cost for b in buckets]
        else:
            costs = [(0 if alone else b.cost) + g for b, g in zip(buckets, grant, strict=True)]
        args = [
            self._now_arg(),
            budget,
            *(str(v) for b, c in zip(buckets, costs, strict=True) for v in (b.limit, c)),
        ]
        return await self._admit(self._redis, keys, args)

    def _keep(
        self, plan: Plan[str], buckets: Sequence[Bucket], grant: list[int], tats: list[float], now: float
    ) -> None:
        """Hold a fresh allowance (what was left of the previous one goes back), and give it back after
        ``LEASE_TTL`` if no request has used it up by then. ``tats`` (Redis's, after the grant) are
        adjusted in place, so that the caller's headers show the same: by what the key owes and has not
        sent yet (what went back of earlier allowances, token differences), as the next settlement will
        leave them."""
        slot = plan.keys
        old = self._allowances.get(slot)
        if old is not None:
            self._return(slot, old)
        if (owed := self._owed.get(plan.principal.key_id)) is not None:
            for i, bucket in enumerate(buckets):
                tats[i] += owed.tokens.get((bucket.key, bucket.limit), 0) * bucket.interval
        allowance = Allowance(plan.principal, tuple(buckets), grant, tats, now, self._monotonic())
        self._allowances[slot] = allowance
        asyncio.get_running_loop().call_later(LEASE_TTL, self._expire, slot, allowance)

    def _expire(self, slot: tuple[str, ...], allowance: Allowance) -> None:
        if self._allowances.get(slot) is not allowance:
            return
        now_local = self._monotonic()
        if not allowance.expired(now_local):  # the limiter's clock decides (a test's is not the loop's)
            left = LEASE_TTL - (now_local - allowance.taken_at)
            asyncio.get_running_loop().call_later(left, self._expire, slot, allowance)
            return
        self._return(slot, allowance)

    def _return(self, slot: tuple[str, ...], allowance: Allowance) -> None:
        """Refund what is left of an allowance with the next settlement."""
        if self._allowances.get(slot) is allowance:
            del self._allowances[slot]
        leftover = allowance.leftover()
        if leftover:
            self._owe(allowance.principal, leftover, 0.0)

    def _unchecked(self, model: str, principal: Principal, reserved: int) -> Admission:
        if not self._fail_open:
            raise Unavailable(
                "rate limiter unavailable (its Redis cannot be reached); try again shortly",
                retry_after=1.0,
            )
        return Admission(model, principal, reserved, degraded=True)

    def settle_soon(
        self, admission: Admission, actual_tokens: int, *, cost: float = 0.0
    ) -> Awaitable[None] | None:
        """Charge the token difference and add the cost; never raises (a lost settlement is logged).

        With ``settle_delay`` > 0 (the default) nothing is sent now: what each key owes is summed here and
        sent once per key every ``settle_delay`` seconds, so a busy key costs one round trip per interval
        instead of one per request. Totals stay exact; buckets and spend lag by at most the delay. With
        no delay, the round trip is what is returned to await."""
        principal = admission.principal
        if admission.degraded or principal is None:
            return None
        actual = max(0, int(actual_tokens))
        if self._settle_delay <= 0:
            deltas = [
                (b, actual - b.cost) for b in admission.buckets if b.kind == "tokens" and actual != b.cost
            ]
            if not deltas and cost <= 0:
                return None
            return self._send_owed(_Owed(principal).add(deltas, cost))
        # added to what the key owes as found, with no list of deltas: this runs at the end of every
        # request (an entry is made only when there is something to owe)
        owed = self._owed.get(principal.key_id)
        for bucket in admission.buckets:
            if bucket.kind == "tokens" and actual != bucket.cost:
                owed = owed or self._owing(principal)
                owed.add_tokens(bucket, actual - bucket.cost)
        if cost > 0:
            owed = owed or self._owing(principal)
            owed.cost += cost
        return None

    def _owe(self, principal: Principal, deltas: Iterable[tuple[Bucket, int]], cost: float) -> None:
        """Add to what the key owes; sent with the next settlement (at most ``settle_delay`` from now)."""
        (self._owed.get(principal.key_id) or self._owing(principal)).add(deltas, cost)

    def _owing(self, principal: Principal) -> _Owed:
        """A new entry for what the key owes, sent with the next settlement (one is due by
        ``settle_delay`` from now)."""
        owed = self._owed[principal.key_id] = _Owed(principal)
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                max(self._settle_delay, 0.0), self._flush_soon
            )
        return owed

    def _flush_soon(self) -> None:
        self._flush_timer = None
        owed, self._owed = self._owed, {}
        if owed:
            task = asyncio.get_running_loop().create_task(self._send_all(owed.values()))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def flush(self) -> None:
        """Give back every allowance (once those being taken ahead have arrived), send what is owed now
        and wait for every settlement in flight (tests, shutdown)."""
        if self._ahead:
            await asyncio.gather(*self._ahead, return_exceptions=True)
        for slot, allowance in list(self._allowances.items()):
            self._return(slot, allowance)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_soon()
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)

    async def _send_all(self, owed: Iterable[_Owed]) -> None:
        await asyncio.gather(*(self._send_owed(o) for o in owed))  # pipelined on the one connection

    async def _send_owed(self, owed: _Owed) -> None:
        if self._outage.skip():
            return
        try:
            await self._call_settle(owed.principal, list(owed.tokens.items()), owed.cost)
        except _FAILURES as exc:
            self._outage.failed(exc)
            return
        self._outage.recovered()

    async def _call_settle(
        self, principal: Principal, deltas: Sequence[tuple[tuple[str, int], int]], cost: float
    ) -> Any:
        spend, ttl = self._spend_key(principal, needed=cost > 0)
        keys = [spend, *(self._ns + key for (key, _), _ in deltas)]
        args = [self._now_arg(), repr(max(0.0, cost)), str(ttl)]
        args += [str(v) for (_, limit), d in deltas for v in (limit, d)]
        return await self._settle(self._redis, keys, args)

    async def add_spend(self, principal: Principal, amount: float) -> float:
        """Add ``amount`` USD to the key's spend this period; ``Unavailable`` when Redis is unreachable."""
        try:
            out = await self._call_settle(principal, (), amount)
        except _FAILURES as exc:
            raise Unavailable("spend counter unavailable (its Redis cannot be reached)") from exc
        return float(out) if out else await self.spent(principal)

    async def spent(self, principal: Principal) -> float:
        try:
            value = await self._redis.call("GET", self._spend_key(principal)[0])
        except _FAILURES as exc:
            raise Unavailable("spend counter unavailable (its Redis cannot be reached)") from exc
        return float(value) if value else 0.0

    async def close(self) -> None:
        await self.flush()
        await self._redis.close()
