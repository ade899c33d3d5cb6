"""What keeps the data plane answering when backends fail, built once per process from ``Settings``.

* ``mounts``: the transports (``transport``): our ``h1`` client for the instances we run; for external
  connections ``transport_external`` (``h1`` for plain HTTP with no proxy, aiohttp's client otherwise);
* ``guard``: breakers per instance and the retry budget (``breaker``), shared by every ``Lease``;
* ``limits``: per-route concurrency with a bounded queue (``limits``);
* ``fallbacks``: the models tried next when a model fails (5xx, timeout, context too short), by name —
  a route's own ``fallbacks`` (deployments fill them) win over the ``fallbacks`` setting;
* ``first_token_timeout``: how long a stream may wait for its first event (None: no limit).

The state is visible in ``GET /admin/v1/resilience`` (``snapshot``) and in ``/metrics`` (``families``):
breakers not closed by instance, the retry budget's tokens and retries allowed and refused, requests
in flight and queued per limited route, fallbacks taken.

Every worker process builds its own: breakers, budgets and queues are per process, like the in-flight
counts of a replica (one process's view is enough to stop sending to an instance that fails).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from aiohttp import web

from superollama.control import Route
from superollama.gateway.breaker import Breakers, RetryBudget
from superollama.gateway.h1 import H1Client
from superollama.gateway.lease import Guard
from superollama.gateway.limits import RouteLimits
from superollama.gateway.responses import json_response
from superollama.gateway.transport import Mounts
from superollama.gateway.transport_external import ExternalTransport
from superollama.settings import Settings
from superollama.telemetry import Counter, Gauge

__all__ = ["RESILIENCE_PATH", "Resilience", "parse_fallbacks"]

RESILIENCE_PATH = "/admin/v1/resilience"
P = "superollama_"


def parse_fallbacks(spec: str) -> Mapping[str, tuple[str, ...]]:
    """``MODEL=FB1,FB2;MODEL2=FB3`` as a mapping (``ValueError`` on a malformed entry)."""
    out: dict[str, tuple[str, ...]] = {}
    for raw in spec.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, rest = entry.partition("=")
        targets = tuple(t.strip() for t in rest.split(",") if t.strip())
        if not sep or not name.strip() or not targets:
            raise ValueError(f"fallbacks entry {entry!r}: write MODEL=FALLBACK[,FALLBACK...]")
        out[name.strip()] = targets
    return MappingProxyType(out)


@dataclass(frozen=True)
class Resilience:
    mounts: Mounts = field(default_factory=lambda: Mounts(H1Client()))
    guard: Guard = field(default_factory=Guard)
    limits: RouteLimits = field(default_factory=RouteLimits)
    fallback_names: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    first_token_timeout: float | None = None
    taken: dict[tuple[str, str], int] = field(default_factory=dict)  # fallbacks taken: (from, to) → count

    @classmethod
    def from_settings(cls, settings: Settings) -> Resilience:
        return cls(
            mounts=Mounts(
                H1Client(),
                ExternalTransport(
                    per_host=settings.external_pool_limit, own_client=settings.external_own_client
                ),
            ),
            guard=Guard(
                Breakers(settings.breaker_failures, settings.breaker_cooldown),
                RetryBudget(settings.retry_budget_ratio, floor=settings.retry_budget_floor),
            ),
            limits=RouteLimits(
                settings.route_max_concurrency, settings.route_max_queue, settings.route_queue_timeout
            ),
            fallback_names=parse_fallbacks(settings.fallbacks),
            first_token_timeout=settings.first_token_timeout or None,
        )

    def fallbacks(self, route: Route) -> tuple[str, ...]:
        return route.fallbacks or self.fallback_names.get(route.name, ())

    def fell_back(self, source: str, to: str) -> None:
        key = (source, to)
        if key in self.taken or len(self.taken) < 1024:
            self.taken[key] = self.taken.get(key, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """This process's view, for the admin API."""
        breakers, budget, limits = self.guard.breakers, self.guard.budget, self.limits
        return {
            "breakers": {
                "failures_to_open": breakers.failures,
                "cooldown_seconds": breakers.cooldown,
                "opened": breakers.opened,
                "instances": [
                    {"instance": i, "state": s, "retry_after": round(breakers.retry_after(i), 3)}
                    for i, s in sorted(breakers.states().items())
                ],
            },
            "retry_budget": {
                "ratio": budget.ratio,
                "tokens": round(budget.tokens, 3),
                "retries": budget.spent,
                "refused": budget.refused,
            },
            "routes": {
                "max_concurrency": limits.concurrency,
                "max_queue": limits.queue,
                "refused": limits.refused,
                "busy": {name: {"in_flight": a, "queued": q} for name, (a, q) in limits.states().items()},
            },
            "fallbacks": {
                "configured": {name: list(names) for name, names in self.fallback_names.items()},
                "taken": [{"from": a, "to": b, "count": n} for (a, b), n in sorted(self.taken.items())],
            },
            "first_token_timeout": self.first_token_timeout,
        }

    def families(self) -> Sequence[Counter]:
        """Prometheus families of the same, built at each scrape."""
        breakers, budget = self.guard.breakers, self.guard.budget
        circuit = Gauge(
            P + "circuit_breakers", "Instances whose breaker is not closed, by state.", ("instance", "state")
        )
        for instance, state in breakers.states().items():
            circuit.set((instance, state), 1)
        opened = Counter(P + "circuit_breaker_opened", "Times a breaker opened.")
        opened.labels().value = breakers.opened
        retries = Counter(
            P + "retries", "Retries to another instance, by outcome of the budget.", ("outcome",)
        )
        retries.labels("allowed").value = budget.spent
        retries.labels("refused").value = budget.refused
        busy = Counter(
            P + "route_busy_rejections", "Requests refused because a model's queue was full or slow."
        )
        busy.labels().value = self.limits.refused
        taken = Counter(P + "fallbacks", "Requests answered by a fallback model.", ("model", "fallback"))
        for (source, to), count in self.taken.items():
            taken.labels(source, to).value = count
        return (circuit, opened, retries, busy, taken)

    def register(self, app: web.Application) -> None:
        """``GET /admin/v1/resilience`` (admin keys, as the rest of the admin API)."""

        async def show(request: web.Request) -> web.Response:
            return json_response(self.snapshot())

        app.router.add_get(RESILIENCE_PATH, show)

    async def close(self) -> None:
        await self.mounts.close()
