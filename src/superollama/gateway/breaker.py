"""Circuit breakers per instance and the retry budget: how the data plane stops hammering what fails.

**Breaker** (one per instance, in this process): *closed* while requests succeed; ``failures`` failures
in a row (a connect error, no answer, a timeout, a 5xx) *open* it, and picking skips the instance while
another of its route is ready (with none, the request fails fast with a 503, which a fallback may take).
After ``cooldown`` seconds it is *half-open*: exactly one request (the probe) goes through; its success
closes the breaker, its failure opens it for another cool-down, and a probe that ends without a verdict
(the client went away) lets the next request probe. Only instances that failed have an entry: a success
in the closed state forgets the instance, and each new routing snapshot drops the instances it no longer
has, so the map stays as small as the set of failing instances.

**Retry budget** (one per process): a token bucket that bounds retries to a share of requests, so that
retries cannot multiply the load on a fleet that is already failing. Each request deposits ``ratio``
tokens (0.2: one retry per five requests), each retry takes one; the bucket holds at most ``capacity``
tokens and refills by itself at ``floor`` tokens a second, so a quiet gateway can still retry now and
then. The clock is injected (``time.monotonic`` by default) so tests control time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Breakers", "RetryBudget"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

Clock = Callable[[], float]


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float | None = None  # set while open or half-open
    probing: bool = False  # the half-open probe is out


class Breakers:
    """Circuit breakers by instance id (see the module's docstring)."""

    def __init__(self, failures: int = 5, cooldown: float = 10.0, clock: Clock = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}
        self.opened = 0  # times a breaker opened, for metrics

    def state(self, instance: str) -> str:
        circuit = self._circuits.get(instance)
        if circuit is None or circuit.opened_at is None:
            return CLOSED
        if self._clock() - circuit.opened_at >= self.cooldown:
            return HALF_OPEN
        return OPEN

    def available(self, instance: str) -> bool:
        """Whether a request may go to ``instance`` now (without taking the half-open probe)."""
        circuit = self._circuits.get(instance)
        if circuit is None or circuit.opened_at is None:
            return True
        return not circuit.probing and self._clock() - circuit.opened_at >= self.cooldown

    def admit(self, instance: str) -> bool:
        """Like ``available``, and a request admitted to a half-open instance is its probe."""
        if not self.available(instance):
            return False
        circuit = self._circuits.get(instance)
        if circuit is not None and circuit.opened_at is not None:
            circuit.probing = True
        return True

    def retry_after(self, instance: str) -> float:
        """Seconds until ``instance`` may be probed (0 when it may take requests now)."""
        circuit = self._circuits.get(instance)
        if circuit is None or circuit.opened_at is None:
            return 0.0
        return max(0.0, circuit.opened_at + self.cooldown - self._clock())

    def success(self, instance: str) -> None:
        self._circuits.pop(instance, None)

    def failure(self, instance: str) -> None:
        circuit = self._circuits.setdefault(instance, _Circuit())
        circuit.failures += 1
        if circuit.opened_at is not None:  # the probe failed (or a request admitted before it opened)
            circuit.opened_at = self._clock()
            circuit.probing = False
        elif circuit.failures >= self.failures:
            circuit.opened_at = self._clock()
            self.opened += 1

    def abandoned(self, instance: str) -> None:
        """A request ended with no verdict on ``instance`` (cancelled): a probe it held is free again."""
        circuit = self._circuits.get(instance)
        if circuit is not None:
            circuit.probing = False

    def states(self) -> dict[str, str]:
        """Every instance whose breaker is not closed, with its state (for /api/ps, the admin API,
        metrics)."""
        return {i: s for i in list(self._circuits) if (s := self.state(i)) != CLOSED}

    def retain(self, instances: set[str]) -> None:
        """Keep the breakers of ``instances`` only (the routing snapshot's): a stopped instance's goes."""
        for instance in [i for i in self._circuits if i not in instances]:
            del self._circuits[instance]


class RetryBudget:
    """Retries bounded to a share of requests (a token bucket; see the module's docstring)."""

    def __init__(
        self, ratio: float = 0.2, capacity: float = 10.0, floor: float = 1.0, clock: Clock = time.monotonic
    ) -> None:
        self.ratio = ratio
        self.capacity = capacity
        self.floor = floor
        self._clock = clock
        self._tokens = capacity
        self._at = clock()
        self.spent = 0  # retries allowed
        self.refused = 0  # retries refused for want of budget

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.floor)
        self._at = now

    def deposit(self) -> None:
        """One request arrived."""
        self._tokens = min(self.capacity, self._tokens + self.ratio)

    def withdraw(self) -> bool:
        """May one retry be sent now? Takes its token if so."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.spent += 1
            return True
        self.refused += 1
        return False

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens
