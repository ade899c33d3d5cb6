"""A request whose instance fails before answering goes elsewhere, through the real ``Upstream``, ``Lease``
and breakers over a mock transport (``tests.mock_transport``): a backend that answers, one where nothing
listens (a killed instance: ``ConnectFailed``), one that read the request and closed (``NoAnswer``), one
that dies halfway through its answer (a request in flight: never sent again), and ones that answer 503.

The starter is the seam (``InstanceStarter``) that the controller and a replica's link implement: here it
records what it was asked and hands out the good backend, so that each decision can be checked exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from tests.doubles import Counts
from tests.mock_transport import MockTransport, Reply, Sent

from superollama.control import Route, RouteTarget
from superollama.core import Endpoint
from superollama.errors import UpstreamError
from superollama.gateway.breaker import Breakers, RetryBudget
from superollama.gateway.lease import Guard, Lease
from superollama.gateway.transport import ConnectFailed, NoAnswer
from superollama.gateway.upstream import Upstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
HELLO = {"choices": [{"message": {"content": "hello"}}]}


@dataclass
class Starter:
    """Replaces any instance with ``good`` when the failure allows it (``crashed``: the process died)."""

    good: RouteTarget
    crashed: bool = True
    asked: list[tuple[str, bool]] = field(default_factory=list)

    async def ensure_ready(self, route: Route) -> RouteTarget:
        return self.good

    async def replace(self, route: Route, failed: str, *, reached: bool) -> RouteTarget | None:
        self.asked.append((failed, reached))
        return self.good if (self.crashed or not reached) else None


def backend(sent: Sent) -> Reply:
    """Each host behaves as its name says."""
    host = sent.base_url.removeprefix("http://")
    if host.startswith("dead"):
        raise ConnectFailed("cannot connect to the backend (Connection refused)")
    if host.startswith("crashed"):
        raise NoAnswer("the backend closed the connection before answering")
    if host.startswith("half"):
        return Reply(200, (b'{"choices"',), broken=True)
    if host.startswith("busy"):
        return Reply.json({"error": {"message": "busy"}}, status=503)
    return Reply.json(HELLO)


def target(instance: str) -> RouteTarget:
    return RouteTarget(instance, Endpoint(f"http://{instance}", "openai", "m"))


GOOD = target("good")


async def post(
    first: RouteTarget,
    starter: Starter,
    counts: Counts,
    *,
    others: tuple[RouteTarget, ...] = (),
    guard: Guard | None = None,
    connection: str | None = None,
) -> tuple[dict[str, object], Lease, MockTransport]:
    transport = MockTransport(backend)
    route = Route("m", "m", True, 0, (first, *others), connection=connection)
    lease = Lease(route, first, starter, counts, guard)
    try:
        return (
            await Upstream(transport, timeout=10).post(lease, "/v1/chat/completions", CHAT),
            lease,
            transport,
        )
    finally:
        lease.release()


async def test_an_instance_that_is_gone_before_the_request_reached_it_is_replaced() -> None:
    starter, counts = Starter(GOOD, crashed=False), Counts()
    answer, lease, transport = await post(target("dead-1"), starter, counts)
    assert answer == HELLO
    assert starter.asked == [("dead-1", False)]  # never reached: safe whatever became of it
    assert lease.instance_id == "good" and [s.base_url for s in transport.sent] == [
        "http://dead-1",
        "http://good",
    ]
    assert counts.now == {"dead-1": 0, "good": 0}  # counted on one instance at a time, then released


async def test_a_crash_after_reading_the_request_is_replaced_only_if_the_process_died() -> None:
    starter = Starter(GOOD, crashed=True)
    answer, _, _ = await post(target("crashed-1"), starter, Counts())
    assert answer == HELLO and starter.asked == [("crashed-1", True)]

    alive = Starter(GOOD, crashed=False)  # the process still runs: it may be working on it
    with pytest.raises(UpstreamError, match="before answering") as failed:
        await post(target("crashed-2"), alive, Counts(), others=(GOOD,))
    assert alive.asked == [("crashed-2", True)]  # not sent to the other ready instance either
    assert "crashed-2" not in failed.value.message


async def test_a_request_the_backend_began_to_answer_is_never_sent_again() -> None:
    starter = Starter(GOOD)
    with pytest.raises(UpstreamError, match="mid-answer"):
        await post(target("half-1"), starter, Counts(), others=(GOOD,))
    assert starter.asked == []


async def test_one_replacement_at_most() -> None:
    starter = Starter(target("dead-2"), crashed=True)
    with pytest.raises(UpstreamError, match="cannot connect"):
        await post(target("dead-1"), starter, Counts())
    assert starter.asked == [("dead-1", False)]


async def test_a_connections_request_is_never_replaced() -> None:
    starter = Starter(GOOD)
    with pytest.raises(UpstreamError):
        await post(target("dead-conn"), starter, Counts(), connection="c")
    assert starter.asked == []


async def test_a_503_or_a_refused_connection_goes_to_another_ready_instance_first() -> None:
    starter, counts = Starter(target("never")), Counts()
    answer, lease, transport = await post(target("busy-1"), starter, counts, others=(target("dead-3"), GOOD))
    assert answer == HELLO and lease.instance_id == "good"
    assert [s.base_url for s in transport.sent] == ["http://busy-1", "http://dead-3", "http://good"]
    assert starter.asked == []  # other ready instances were enough
    assert counts.now == {"busy-1": 0, "dead-3": 0, "good": 0}


async def test_the_retry_budget_bounds_retries_to_a_share_of_requests() -> None:
    clock = [0.0]
    budget = RetryBudget(ratio=0.25, capacity=1.0, floor=0.0, clock=lambda: clock[0])
    guard = Guard(Breakers(failures=100), budget)
    dead = tuple(target(f"dead-{i}") for i in range(5))
    # the bucket starts with one token: the first request retries once, then the budget refuses
    with pytest.raises(UpstreamError, match="cannot connect"):
        _, _, transport = await post(dead[0], Starter(GOOD), Counts(), others=dead[1:], guard=guard)
    assert (budget.spent, budget.refused) == (1, 1)
    # requests that succeed refill it: four requests deposit a whole token (4 x 0.25)
    for _ in range(4):
        await post(GOOD, Starter(GOOD), Counts(), guard=guard)
    answer, lease, transport = await post(dead[0], Starter(GOOD), Counts(), others=(GOOD,), guard=guard)
    assert answer == HELLO and lease.instance_id == "good"
    assert (budget.spent, budget.refused) == (2, 1)
    assert [s.base_url for s in transport.sent] == ["http://dead-0", "http://good"]
