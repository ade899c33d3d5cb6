"""The gateway's settlement at the end of a request (``RequestMiddleware`` → ``Security.settle_soon``),
through a real aiohttp app, with the real limiters: what a limiter charges at once is charged when the
answer is out, with no task; what needs a round trip (Redis with ``settle_delay=0``) is sent by one task
that the middleware's ``close`` waits for. A settlement that fails is logged, and the answer stands."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from superollama.core.types import KeyRecord
from superollama.gateway.exchange import exchange_of
from superollama.gateway.middleware import NullObserver, RequestMiddleware
from superollama.security import Budgets, KeyCache, MemoryRateLimiter, Price, PriceTable, Security
from superollama.security.keys import generate_key
from superollama.security.limits import RateLimiter
from superollama.security.redis_limits import RedisRateLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"
PRICES = PriceTable({"m": Price(input=1_000_000.0, output=0.0)})  # $1 a prompt token


def _memory() -> RateLimiter:
    return MemoryRateLimiter()


def _redis_each() -> RateLimiter:  # every settlement is a round trip of its own
    return RedisRateLimiter(REDIS_URL, namespace=f"settle:{uuid.uuid4().hex[:8]}:", settle_delay=0)


@pytest.fixture(params=[_memory, _redis_each], ids=["memory", "redis-no-delay"])
async def gateway(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Security, RequestMiddleware, str]]:
    make: Callable[[], RateLimiter] = request.param
    limiter = make()
    key = generate_key()
    keys = KeyCache()
    keys.load([KeyRecord(id=f"k_{uuid.uuid4().hex[:8]}", name="t", prefix=key.prefix, hash=key.hash)])
    security = Security(keys, limiter, Budgets(PRICES, limiter), auth_required=True)
    middleware = RequestMiddleware(security, NullObserver(), "node-1")

    async def chat(request: web.Request) -> web.Response:
        ex = exchange_of(request)
        assert ex is not None and ex.principal is not None
        ex.model = "m"
        ex.admission = await security.admit(ex.principal, "m", 10)
        ex.usage((int(request.query.get("prompt", "3")), 1))  # what the backend said it used
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[middleware.middleware()])
    app.router.add_post("/v1/chat/completions", chat)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, security, middleware, key.key
    finally:
        await client.close()
        await middleware.close()
        await limiter.close()


async def test_each_request_is_settled_by_the_end_of_the_middleware(
    gateway: tuple[TestClient[web.Request, web.Application], Security, RequestMiddleware, str],
) -> None:
    client, security, middleware, key = gateway
    principal = security.keys.lookup(key)
    for prompt in (3, 4):
        response = await client.post(
            "/v1/chat/completions", params={"prompt": str(prompt)}, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status == 200
    if isinstance(security.limiter, MemoryRateLimiter):  # charged in memory as each answer ended
        assert await security.limiter.spent(principal) == pytest.approx(7.0)
    await middleware.close()  # waits for the round trips the requests left to send
    assert await security.limiter.spent(principal) == pytest.approx(7.0)


async def test_a_settlement_that_fails_is_logged_and_the_answer_stands(
    gateway: tuple[TestClient[web.Request, web.Application], Security, RequestMiddleware, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, security, middleware, key = gateway

    def failing(*args: object) -> None:
        raise RuntimeError("the price table broke")

    security.settle_soon = failing  # type: ignore[method-assign]
    response = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200
    await middleware.close()
    assert "rate-limit settlement failed: the price table broke" in caplog.text
