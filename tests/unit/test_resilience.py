"""Breakers, fallbacks, route queues and the first-token timeout, through the real gateway routes
(``OpenAIRoutes``, ``OllamaRoutes``, ``ModelTargets``, ``Relay``) in process, on a mock transport: each
backend is a function of the test (``tests.mock_transport``), and time is the test's own clock where a
breaker's cool-down is involved. Nothing here measures time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from tests.doubles import Counts, NoStarter
from tests.mock_transport import MockTransport, Reply, Sent
from tests.waiting import wait_until

from superollama.control import Route, RouteTarget, RoutingHolder, RoutingTable
from superollama.core import Endpoint
from superollama.gateway import OpenAIRoutes, Relay, error_middleware
from superollama.gateway.breaker import CLOSED, HALF_OPEN, OPEN, Breakers, RetryBudget
from superollama.gateway.exchange import EXCHANGE, Exchange
from superollama.gateway.lease import Guard
from superollama.gateway.limits import RouteLimits
from superollama.gateway.middleware import AnswerHeaders
from superollama.gateway.ollama_routes import OllamaRoutes
from superollama.gateway.openai_routes import ModelTargets
from superollama.gateway.resilience import Resilience, parse_fallbacks
from superollama.gateway.transport import Mounts
from superollama.security import Budgets, KeyCache, MemoryRateLimiter, PriceTable, Security

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = {
    "id": "c1",
    "object": "chat.completion",
    "created": 0,
    "model": "x",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def target(instance: str) -> RouteTarget:
    return RouteTarget(instance, Endpoint(f"http://{instance}", "openai", f"served-{instance}"))


def route(name: str, *instances: str) -> Route:
    return Route(name, name, True, 0, tuple(target(i) for i in instances))


def _security() -> Security:
    limiter = MemoryRateLimiter()
    return Security(KeyCache(), limiter, Budgets(PriceTable.parse(None), limiter), auth_required=False)


@web.middleware
async def exchanges(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What ``RequestMiddleware`` does first: each request gets its exchange (headers, metering)."""
    request[EXCHANGE] = Exchange(
        request_id="r", protocol="ollama" if request.path.startswith("/api/") else "openai"
    )
    return await handler(request)


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[[MockTransport, list[Route], Resilience], TestClient]]:
    clients: list[TestClient] = []

    def make(transport: MockTransport, routes: list[Route], resilience: Resilience) -> TestClient:
        holder = RoutingHolder()
        holder.publish(RoutingTable.build(routes, 1))
        limiter = MemoryRateLimiter()
        security = Security(
            KeyCache(), limiter, Budgets(PriceTable.parse(None), limiter), auth_required=False
        )
        counts = Counts()
        targets = ModelTargets(holder, NoStarter(), counts, security, resilience)
        mounts = Mounts(transport)
        relay = Relay(mounts, 30, first_token_timeout=resilience.first_token_timeout)
        app = web.Application(middlewares=[exchanges, error_middleware])
        AnswerHeaders.of(app)
        OpenAIRoutes(holder, targets, relay).register(app)
        OllamaRoutes(
            targets, None, counts, mounts, 30, first_token_timeout=resilience.first_token_timeout
        ).register(app, management=False)
        resilience.register(app)
        client = TestClient(TestServer(app))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def test_a_breaker_opens_after_consecutive_failures_and_recovers_through_half_open() -> None:
    clock = Clock()
    breakers = Breakers(failures=3, cooldown=10, clock=clock)
    breakers.failure("a")
    breakers.success("a")  # a success in between: the count starts again
    for _ in range(2):
        breakers.failure("a")
    assert breakers.state("a") == CLOSED and breakers.available("a")
    breakers.failure("a")
    assert breakers.state("a") == OPEN and not breakers.available("a") and breakers.opened == 1
    assert breakers.retry_after("a") == 10
    clock.now = 10
    assert breakers.state("a") == HALF_OPEN
    assert breakers.admit("a")  # the probe
    assert not breakers.available("a")  # one probe at a time
    breakers.failure("a")  # the probe failed: open for another cool-down
    assert breakers.state("a") == OPEN and breakers.retry_after("a") == 10
    clock.now = 20
    assert breakers.admit("a")
    breakers.abandoned("a")  # the probe's client went away: the next request may probe
    assert breakers.admit("a")
    breakers.success("a")
    assert breakers.state("a") == CLOSED and breakers.states() == {}


def test_the_retry_budget_refills_at_its_floor() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, capacity=2, floor=0.5, clock=clock)
    assert budget.withdraw() and budget.withdraw() and not budget.withdraw()
    clock.now = 2  # 2 s at 0.5 token/s: one retry more
    assert budget.withdraw() and not budget.withdraw()
    assert (budget.spent, budget.refused) == (3, 2)


def test_fallbacks_setting_is_parsed_and_checked() -> None:
    assert parse_fallbacks("a=b,c; d:1=conn/e") == {"a": ("b", "c"), "d:1": ("conn/e",)}
    with pytest.raises(ValueError, match="MODEL=FALLBACK"):
        parse_fallbacks("a")


async def test_picking_skips_an_open_instance_until_its_probe_succeeds(
    gateway: Callable[..., TestClient],
) -> None:
    healthy = {"a": False}

    def backend(sent: Sent) -> Reply:
        if sent.base_url == "http://a" and not healthy["a"]:
            return Reply.json({"error": {"message": "boom"}}, status=500)
        return Reply.json(ANSWER)

    clock = Clock()
    transport = MockTransport(backend)
    resilience = Resilience(guard=Guard(Breakers(failures=2, cooldown=10, clock=clock)))
    client = gateway(transport, [route("m", "a", "b")], resilience)
    await client.start_server()
    for _ in range(2):  # both go to "a" (listed first, nothing in flight): a 500 is not retried
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status == 502
    state = await (await client.get("/admin/v1/resilience")).json()
    assert state["breakers"]["instances"] == [{"instance": "a", "state": "open", "retry_after": 10}]
    for _ in range(3):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    assert len(transport.to("http://a")) == 2 and len(transport.to("http://b")) == 3
    healthy["a"] = True
    clock.now = 10  # the cool-down is over: the next request to pick "a" is its probe
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    assert len(transport.to("http://a")) == 3
    assert resilience.guard.breakers.state("a") == CLOSED


async def test_a_fallback_answers_when_the_primary_fails(gateway: Callable[..., TestClient]) -> None:
    def backend(sent: Sent) -> Reply:
        if sent.base_url == "http://p":
            return Reply.json({"error": {"message": "internal"}}, status=500)
        if sent.base_url == "http://short":
            error = {
                "code": 400,
                "message": "the request exceeds the available context size",
                "type": "exceed_context_size_error",
            }
            return Reply.json({"error": error}, status=400)
        return Reply.json(ANSWER)

    transport = MockTransport(backend)
    resilience = Resilience(fallback_names=parse_fallbacks("m=fb;s=fb"))
    client = gateway(
        transport, [route("m", "p"), route("fb", "f"), route("s", "short"), route("alone", "p")], resilience
    )
    await client.start_server()
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status == 200 and response.headers["X-Superollama-Fallback"] == "fb"
    assert (await response.json())["choices"][0]["message"]["content"] == "hello"
    assert [s.base_url for s in transport.sent] == ["http://p", "http://f"]
    assert transport.sent[1].json()["model"] == "served-f"  # type: ignore[index]
    ollama = await client.post("/api/chat", json={**CHAT, "stream": False})  # the Ollama API too
    assert ollama.status == 200 and ollama.headers["X-Superollama-Fallback"] == "fb"
    assert (await ollama.json())["message"]["content"] == "hello"
    # a prompt too long for the primary's context goes to the fallback too
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "s"})
    assert response.status == 200 and response.headers["X-Superollama-Fallback"] == "fb"
    # no fallback configured: the primary's error, in OpenAI's shape
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "alone"})
    assert response.status == 502 and (await response.json())["error"]["message"] == "internal"
    state = await (await client.get("/admin/v1/resilience")).json()
    assert state["fallbacks"]["taken"] == [
        {"from": "m", "to": "fb", "count": 2},
        {"from": "s", "to": "fb", "count": 1},
    ]


async def test_a_full_route_queue_answers_503_with_retry_after(gateway: Callable[..., TestClient]) -> None:
    release = asyncio.Event()

    async def backend(sent: Sent) -> Reply:
        await release.wait()  # the first request holds the route's only slot until the test lets go
        return Reply.json(ANSWER)

    transport = MockTransport(backend)
    limits = RouteLimits(concurrency=1, queue=1, queue_timeout=60)
    client = gateway(transport, [route("m", "a")], Resilience(limits=limits))
    await client.start_server()
    first = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    await wait_until(lambda: len(transport.sent) == 1, what="the first request reached the backend")
    second = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
    await wait_until(lambda: limits.state("m") == (1, 1), what="the second request waits in the queue")
    third = await client.post("/v1/chat/completions", json=CHAT)
    assert third.status == 503 and third.headers["Retry-After"] == "1"
    body = await third.json()
    assert body["error"]["code"] == "server_busy" and "waiting" in body["error"]["message"]
    ollama = await client.post("/api/chat", json={**CHAT, "stream": False})
    assert ollama.status == 503 and ollama.headers["Retry-After"] == "1"
    assert set(await ollama.json()) == {"error"}  # Ollama's error shape
    assert len(transport.sent) == 1  # the refused ones never reached the backend
    release.set()
    assert (await first).status == 200 and (await second).status == 200
    assert len(transport.sent) == 2 and limits.state("m") == (0, 0)


async def test_a_stream_without_a_first_token_in_time_is_a_504(gateway: Callable[..., TestClient]) -> None:
    never = asyncio.Event()  # the backend sends its headers, then nothing
    replies: list[Reply] = []

    def backend(sent: Sent) -> Reply:
        replies.append(Reply.sse([b'data: {"choices":[]}\n\n'], hold=never))
        return replies[-1]

    transport = MockTransport(backend)
    resilience = Resilience(first_token_timeout=0.2)  # a timer under test: it must fire
    client = gateway(transport, [route("m", "a")], resilience)
    await client.start_server()
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status == 504
    error = (await response.json())["error"]
    assert error["code"] == "upstream_timeout" and "first token" in error["message"]
    assert replies[0].closed  # the backend's answer was let go: its connection closes
    ollama = await client.post("/api/chat", json=CHAT)  # Ollama streams by default
    assert ollama.status == 504 and ollama.content_type == "application/json"
    assert "first token" in (await ollama.json())["error"]
    assert replies[1].closed


async def test_an_open_instance_with_nowhere_else_to_go_is_still_tried(
    gateway: Callable[..., TestClient],
) -> None:
    transport = MockTransport(lambda sent: Reply.json({"error": {"message": "boom"}}, status=500))
    resilience = Resilience(guard=Guard(Breakers(failures=1, cooldown=600)))
    client = gateway(transport, [route("solo", "a")], resilience)
    await client.start_server()
    for _ in range(2):
        response = await client.post("/v1/chat/completions", json={**CHAT, "model": "solo"})
        assert response.status == 502 and (await response.json())["error"]["message"] == "boom"
    assert resilience.guard.breakers.state("a") == OPEN
    assert len(transport.sent) == 2  # the second was sent although the breaker was open: no fallback
    holder = RoutingHolder()
    targets = ModelTargets(holder, NoStarter(), Counts(), _security(), resilience)
    assert targets.resilience.guard.breakers.states() == {"a": OPEN}
    holder.publish(RoutingTable.build([route("solo", "b")], 2))  # instance "a" stopped, "b" replaced it
    assert resilience.guard.breakers.states() == {}


async def test_mounts_pick_a_prefix_then_the_kind_of_endpoint() -> None:
    instances, external, special = (MockTransport(lambda s: Reply()) for _ in range(3))
    mounts = Mounts(instances, external, {"https://api.example.com/": special})
    assert mounts.select("http://127.0.0.1:5000", external=False) is instances
    assert mounts.select("https://other.example.com/v1", external=True) is external
    assert mounts.select("https://api.example.com/v1", external=True) is special
    assert Mounts(instances).select("https://x", external=True) is instances  # one transport for all
    await mounts.close()
    assert instances.closed and external.closed and special.closed
