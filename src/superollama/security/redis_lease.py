"""Local pre-admission for the Redis limiter: a busy key takes a small allowance of requests (and tokens)
from Redis together with one admission, then admits its next requests from that allowance in memory, with
no round trip. The next allowance is taken ahead, in the background, when a quarter of the current one is
left or three quarters of its life are gone: a steady key's requests never wait for Redis.

The allowance is charged to the key's buckets in Redis when it is taken (in the same atomic script as the
admission, or alone when taken ahead), so every process sees it as spent at once: no process can admit
beyond the limit because of it. What is left of an allowance after ``LEASE_TTL`` seconds (or when the next
one arrives) is refunded with the next settlement. The stated bound, per bucket:

- at most ``LEASE_TTL / 60 s`` of the limit (0.1 %) more admitted than an exact limiter would, and only
  when the bucket was not full at the grant: units are charged before they are used, so a bucket with
  room counts them from the grant's time rather than from their use, at most ``LEASE_TTL`` earlier (a
  full bucket's TAT lies ahead of now, where the time of the charge does not move it);
- at most ``2 * min(limit // LEASE_SHARE, LEASE_REQUESTS requests' worth)`` units per gateway process
  held back (charged, not yet used) at any moment, each for at most ``LEASE_TTL`` plus ``settle_delay``
  seconds: the allowance in use and the next, taken ahead (by age, most of the one in use may still be
  unused). That is 0.2 % of the limit, so a key refused near its limit is refused at most that early;
- only buckets that large get an allowance (worth ``LEASE_MIN`` requests at least: rpm >= 8,000), and
  never a key with a budget (its spend is checked in Redis on every request). Smaller limits behave
  exactly as without it. While Redis is unreachable, what is left of an allowance is still admitted
  (it was charged) before the limiter fails open or closed.

The ``x-ratelimit-*`` headers of a local admission are worked out from the buckets' TATs at the grant, the
units since used, and the time since.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from superollama.security.keys import Principal
from superollama.security.limits import Bucket, Plan

__all__ = [
    "LEASE_LOW_AGE",
    "LEASE_LOW_LEFT",
    "LEASE_MIN",
    "LEASE_REQUESTS",
    "LEASE_SHARE",
    "LEASE_TTL",
    "Allowance",
    "grant_for",
]

LEASE_SHARE = 1000  # an allowance is at most 1/1000 of each bucket's limit
LEASE_REQUESTS = 256  # and at most this many requests' worth of each bucket
LEASE_MIN = 8  # an allowance smaller than this many requests' worth saves too little to be taken
LEASE_TTL = 0.06  # seconds an allowance admits from; what is left then goes back to Redis
# the next allowance is taken ahead when this share of the current one is left, or of its life is gone
LEASE_LOW_LEFT = 0.25
LEASE_LOW_AGE = 0.75 * LEASE_TTL


def grant_for(buckets: Sequence[Bucket]) -> tuple[int, ...] | None:
    """The units an allowance takes from each bucket on top of this request's cost, or None when some
    bucket is too small for one (or nothing would be granted)."""
    grant = tuple(min(b.limit // LEASE_SHARE, LEASE_REQUESTS * b.cost) for b in buckets)
    if not buckets or any(g < LEASE_MIN * b.cost or g <= 0 for g, b in zip(grant, buckets, strict=True)):
        return None
    return grant


@dataclass(slots=True, eq=False)
class Allowance:
    """Units left per bucket of one key's allowance; the buckets' TATs and Redis's time at the grant."""

    principal: Principal
    buckets: tuple[Bucket, ...]
    left: list[int]
    tats: list[float]
    now: float  # Redis time (relative to EPOCH) of the grant
    taken_at: float  # local monotonic time of the grant
    low: tuple[int, ...] = ()  # units left per bucket under which the next one is taken ahead (set here)
    ahead: bool = False  # whether the next one was asked for (once: a refusal is not asked again)
    due: bool = False  # whether the last ``take`` found the next one due, and not asked for yet

    def __post_init__(self) -> None:
        self.low = tuple(int(n * LEASE_LOW_LEFT) for n in self.left)

    def expired(self, monotonic: float) -> bool:
        return monotonic - self.taken_at >= LEASE_TTL

    def take(self, plan: Plan[str], buckets: Sequence[Bucket], age: float) -> dict[str, str] | None:
        """Admit one request costing ``buckets``' costs (``plan``'s, charged) from what is left, ``age``
        seconds after the grant: its rate headers, or None when some bucket has too little left (the
        caller goes to Redis). Sets ``due``: whether the next allowance should be asked for now (it was
        not yet, and a quarter or less is left of a bucket's allowance, or of its life).

        One method for all that an admission from the allowance needs (the check, the charge, whether it
        runs low, the headers): it runs on every request of a busy key."""
        left = self.left
        for i, bucket in enumerate(buckets):
            if left[i] < bucket.cost:
                self.due = not self.ahead
                return None
        # the TATs as if the units still left had not been charged yet: what the headers show
        own, tats, low = self.buckets, self.tats[:], self.low
        due = age >= LEASE_LOW_AGE
        for i, bucket in enumerate(buckets):
            n = left[i] = left[i] - bucket.cost
            tats[i] -= n * own[i].interval
            if n <= low[i]:
                due = True
        self.due = due and not self.ahead
        return plan.headers(tats, self.now + age)

    def leftover(self) -> list[tuple[Bucket, int]]:
        """What to refund: minus the units left, per bucket (and nothing left after this)."""
        out = [(b, -n) for b, n in zip(self.buckets, self.left, strict=True) if n > 0]
        self.left = [0] * len(self.left)
        return out
