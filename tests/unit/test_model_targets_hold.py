"""``ModelTargets.hold``: the route's slot and a lease on a target for the block, both given back at its
end however it ends (normally, by an error in the block, or by no target to be had)."""

from __future__ import annotations

from typing import Any

import pytest
from tests.doubles import Counts

from superollama.control import Route, RouteTarget, RoutingHolder, RoutingTable
from superollama.core import Endpoint
from superollama.errors import Unavailable
from superollama.gateway.exchange import EXCHANGE, Exchange
from superollama.gateway.limits import RouteLimits
from superollama.gateway.openai_routes import ModelTargets
from superollama.gateway.resilience import Resilience
from superollama.security import Budgets, KeyCache, MemoryRateLimiter, PriceTable, Security

RUNNING = Route("m", "m", True, 0, (RouteTarget("a", Endpoint("http://a", "openai", "served-a")),))
STOPPED = Route("cold", "cold", True, 0, ())


class NothingStarts:
    """A controller that cannot start anything (no room anywhere)."""

    async def ensure_ready(self, route: Route) -> RouteTarget:
        raise Unavailable(f"no room for {route.name!r}")

    async def replace(self, route: Route, failed: str, *, reached: bool) -> RouteTarget | None:
        return None


def targets_with(counts: Counts, limits: RouteLimits) -> ModelTargets:
    limiter = MemoryRateLimiter()
    security = Security(KeyCache(), limiter, Budgets(PriceTable.parse(None), limiter), auth_required=False)
    holder = RoutingHolder()
    holder.publish(RoutingTable.build([RUNNING, STOPPED], 1))
    return ModelTargets(holder, NothingStarts(), counts, security, Resilience(limits=limits))


def request_with(ex: Exchange) -> Any:
    return {EXCHANGE: ex}  # what hold reads of a request: its exchange


async def test_the_block_holds_a_slot_and_a_lease_until_it_ends() -> None:
    counts, limits = Counts(), RouteLimits(concurrency=1)
    targets = targets_with(counts, limits)
    ex = Exchange("r", "openai")
    async with targets.hold(RUNNING, request_with(ex)) as lease:
        assert lease.target.instance_id == "a" and ex.instance == "a"
        assert counts.now == {"a": 1} and limits.state("m") == (1, 0)
    assert counts.now == {"a": 0} and limits.state("m") == (0, 0)


async def test_an_error_in_the_block_gives_both_back_and_goes_on() -> None:
    counts, limits = Counts(), RouteLimits(concurrency=1)
    targets = targets_with(counts, limits)
    with pytest.raises(ValueError, match="in the block"):
        async with targets.hold(RUNNING) as lease:
            assert lease.target.instance_id == "a"
            raise ValueError("in the block")
    assert counts.now == {"a": 0} and limits.state("m") == (0, 0)


async def test_no_target_gives_the_slot_back() -> None:
    counts, limits = Counts(), RouteLimits(concurrency=1)
    targets = targets_with(counts, limits)
    for _ in range(2):  # the second would find the one slot taken if the first had kept it
        with pytest.raises(Unavailable, match="no room"):
            async with targets.hold(STOPPED):
                raise AssertionError("no lease without a target")
        assert limits.state("cold") == (0, 0)
    assert counts.now == {}


async def test_a_route_without_fallbacks_is_just_its_attempt() -> None:
    targets = targets_with(Counts(), RouteLimits())
    tried: list[tuple[str, bool]] = []

    async def attempt(route: Route, more: bool) -> Any:
        tried.append((route.name, more))
        return route.name

    pending: Any = targets.with_fallbacks(request_with(Exchange("r", "openai")), RUNNING, attempt)
    assert pending.cr_code is attempt.__code__  # the attempt's own coroutine: no other around it
    assert await pending == "m"
    assert tried == [("m", False)]
