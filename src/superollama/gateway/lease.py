"""One request's claim on an instance, and its moves elsewhere when that instance fails before answering.

A request picks a target from the snapshot, then is counted in flight there until it ends. The instance
may fail it before any byte of an answer: nothing listens (a crashed or stopped process: ``ConnectFailed``),
the connection closed unanswered (``NoAnswer``), or the backend answered 502/503 (overloaded, going away).
Such a request is not lost; where it goes next depends on what the backend may have done with it:

* never reached (connect error) or refused (502/503): another ready instance of the route whose breaker
  is not open (``elsewhere``), else a replacement of the failed instance from whoever runs the instances
  (``InstanceStarter.replace``: the same bounded wait as a cold start);
* possibly read (no answer): only a replacement, and only when its process died (a dead process does not
  go on with the request; a running one might, and the request would run twice).

Every move costs a token of the process's retry budget (``breaker.RetryBudget``), so retries stay a share
of the requests; every outcome is told to the instance's breaker (``breaker.Breakers``). A request the
backend had begun to answer is never sent again. Trying another *route* (a fallback) is the caller's
business, after the lease is released.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from superollama.core import Endpoint
from superollama.core.routing import Route, RouteTarget
from superollama.gateway.breaker import Breakers, RetryBudget
from superollama.gateway.seams import InstanceAccounting, InstanceStarter

__all__ = ["Guard", "Lease"]

_REPLACEMENTS = 1  # a replacement that dies too before answering is a real outage: say so


@dataclass(frozen=True)
class Guard:
    """The process's breakers and retry budget, shared by every lease."""

    breakers: Breakers = field(default_factory=Breakers)
    budget: RetryBudget = field(default_factory=RetryBudget)


class Lease:
    """The target a request is counted on (``target``; ``endpoint`` and ``instance_id`` are its)."""

    __slots__ = ("_accounting", "_guard", "_left", "_route", "_starter", "_tried", "_verdict", "target")

    def __init__(
        self,
        route: Route,
        target: RouteTarget,
        starter: InstanceStarter,
        accounting: InstanceAccounting,
        guard: Guard | None = None,
    ) -> None:
        self._route = route
        self._starter = starter
        self._accounting = accounting
        self._guard = guard if guard is not None else Guard()
        self._left = _REPLACEMENTS
        self._tried = {target.instance_id}
        self._verdict = False
        self.target = target
        accounting.acquire(target.instance_id)
        self._guard.budget.deposit()
        self._guard.breakers.admit(target.instance_id)

    @property
    def endpoint(self) -> Endpoint:
        return self.target.endpoint

    @property
    def instance_id(self) -> str:
        return self.target.instance_id

    @property
    def external(self) -> bool:
        """The target is a connection's server (an external transport serves it), not an instance we run."""
        return self._route.connection is not None

    def succeeded(self) -> None:
        """The target answered (a status below 500): its breaker closes."""
        self._verdict = True
        self._guard.breakers.success(self.target.instance_id)

    def failed(self) -> None:
        """The target failed this request (no answer, a 5xx, a timeout, a broken stream)."""
        self._verdict = True
        self._guard.breakers.failure(self.target.instance_id)

    def elsewhere(self) -> RouteTarget | None:
        """Another ready instance of the route, untried and not open, with a retry token taken for it;
        None when there is none, or the retry budget is spent."""
        candidate = self._candidate()
        if candidate is None or not self._guard.budget.withdraw():
            return None
        return candidate

    def _candidate(self) -> RouteTarget | None:
        breakers, tried = self._guard.breakers, self._tried
        candidates = [
            t for t in self._route.targets if t.instance_id not in tried and breakers.available(t.instance_id)
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda t: self._accounting.in_flight(t.instance_id))

    def move(self, new: RouteTarget) -> None:
        """Count the request on ``new`` from now on (the failed target's verdict was told already)."""
        self._accounting.acquire(new.instance_id)
        self._accounting.release(self.target.instance_id)
        self._tried.add(new.instance_id)
        self._verdict = False
        self.target = new
        self._guard.breakers.admit(new.instance_id)

    async def replace(self, *, reached: bool) -> bool:
        """Move elsewhere after the target gave no answer (``reached``: the request may have reached it);
        False when the request must fail instead."""
        if not reached and self._candidate() is not None:
            other = self.elsewhere()
            if other is None:
                return False  # the retry budget is spent
            self.move(other)
            return True
        if self._left <= 0 or self._route.connection is not None:
            return False
        self._left -= 1
        if not self._guard.budget.withdraw():
            return False
        new = await self._starter.replace(self._route, self.target.instance_id, reached=reached)
        if new is None:
            return False
        self.move(new)
        return True

    def release(self) -> None:
        if not self._verdict:  # cancelled before a verdict: a half-open probe it held is free again
            self._guard.breakers.abandoned(self.target.instance_id)
        self._accounting.release(self.target.instance_id)
