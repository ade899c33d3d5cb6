"""The data plane's middlewares, through a real aiohttp app on loopback: ``RequestMiddleware`` is the
middleware object itself and answers an oversized body's 413 first (not metered); ``ErrorMiddleware`` runs
its ``check`` (the admin API's body validation) before the handler and renders what it raises;
``ShadowTap.around`` adds no coroutine to a request that has no shadow (``with_fallbacks``' twin is in
``test_model_targets_hold.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from superollama.core import RequestRecord
from superollama.errors import InvalidRequest
from superollama.gateway.errors import ErrorMiddleware, Handler
from superollama.gateway.middleware import RequestMiddleware
from superollama.gateway.shadow import ShadowTap
from superollama.security import Budgets, KeyCache, MemoryRateLimiter, PriceTable, Security

LIMIT = 1024


class Recorder:
    capture_content = False

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def record(self, record: RequestRecord) -> None:
        self.records.append(record)

    def inflight(self, delta: int) -> None:
        pass


def _security() -> Security:
    limiter = MemoryRateLimiter()
    return Security(KeyCache(), limiter, Budgets(PriceTable({}), limiter), auth_required=False)


@contextlib.asynccontextmanager
async def _served(
    app: web.Application, handler: Handler, *paths: str
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """``app`` with ``handler`` on ``paths`` (POST), served on loopback for the block."""
    for path in paths:
        app.router.add_post(path, handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def metered() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Recorder, list[str]]]:
    recorder, reached = Recorder(), []

    async def chat(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.json_response({"ok": True})

    app = web.Application(
        client_max_size=LIMIT, middlewares=[RequestMiddleware(_security(), recorder, "n").middleware()]
    )
    async with _served(app, chat, "/v1/chat/completions", "/api/chat") as client:
        yield client, recorder, reached


async def test_the_middleware_is_the_object_aiohttp_calls() -> None:
    middleware = RequestMiddleware(_security(), Recorder(), "n")
    assert middleware.middleware() is middleware
    assert middleware.__middleware_version__ == 1  # aiohttp takes it as a new-style middleware, no warning


@pytest.mark.parametrize(("path", "shape"), [("/v1/chat/completions", "openai"), ("/api/chat", "ollama")])
async def test_a_declared_body_over_the_limit_is_a_413_first_and_not_metered(
    metered: tuple[TestClient[web.Request, web.Application], Recorder, list[str]], path: str, shape: str
) -> None:
    client, recorder, reached = metered
    response = await client.post(path, data=b"x" * (LIMIT + 1), headers={"Content-Type": "application/json"})
    assert response.status == 413
    body = await response.json()
    message = body["error"]["message"] if shape == "openai" else body["error"]
    assert f"Content-Length {LIMIT + 1} is over the limit of {LIMIT} bytes" in message
    assert response.headers.get("Connection") == "close"
    assert reached == [] and recorder.records == []  # refused before the handler, outside the metering

    client, recorder, reached = metered
    ok = await client.post(path, data=b"{}", headers={"Content-Type": "application/json"})
    assert ok.status == 200 and reached == [path]
    assert [r.status for r in recorder.records] == [200]  # a request within the limit is metered


async def test_without_refuse_oversized_the_app_before_it_answers_the_413() -> None:
    reached: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.json_response({"ok": True})

    middleware = RequestMiddleware(_security(), Recorder(), "n", refuse_oversized=False)
    app = web.Application(client_max_size=LIMIT, middlewares=[middleware.middleware()])
    async with _served(app, chat, "/v1/chat/completions") as client:
        response = await client.post("/v1/chat/completions", data=b"x" * (LIMIT + 1))
        assert response.status == 200 and reached == ["/v1/chat/completions"]  # the body was never read


@pytest.fixture
async def checked() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], list[str], list[str]]]:
    checks, reached = [], []

    async def refuse(request: web.Request) -> None:
        body = await request.json()
        if "name" not in body:
            raise InvalidRequest("'name' is a required property", param="name")

    def check(request: web.Request) -> Awaitable[None] | None:
        checks.append(request.path)
        return refuse(request) if request.path.startswith("/admin/") else None

    async def handler(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.json_response(await request.json())

    app = web.Application(client_max_size=LIMIT, middlewares=[ErrorMiddleware(check=check)])
    async with _served(app, handler, "/admin/v1/things", "/v1/things") as client:
        yield client, checks, reached


async def test_the_check_runs_before_the_handler_and_its_error_is_rendered(
    checked: tuple[TestClient[web.Request, web.Application], list[str], list[str]],
) -> None:
    client, checks, reached = checked
    bad = await client.post("/admin/v1/things", json={"other": 1})
    assert bad.status == 400
    error = (await bad.json())["error"]
    assert error["param"] == "name" and error["type"] == "invalid_request_error"
    assert reached == []

    good = await client.post("/admin/v1/things", json={"name": "a"})
    assert good.status == 200 and await good.json() == {"name": "a"}  # the body is still there to read
    plain = await client.post("/v1/things", json={"other": 1})  # nothing to check: None, not awaited
    assert plain.status == 200
    assert checks == ["/admin/v1/things", "/admin/v1/things", "/v1/things"]
    assert reached == ["/admin/v1/things", "/v1/things"]


async def test_a_body_over_the_limit_met_by_the_check_is_a_json_413(
    checked: tuple[TestClient[web.Request, web.Application], list[str], list[str]],
) -> None:
    client, _, reached = checked

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: found too large while being read
        yield b'{"name": "' + b"x" * LIMIT + b'"}'

    response = await client.post("/admin/v1/things", data=chunks())
    assert response.status == 413
    assert "too large" in (await response.json())["error"]["message"]
    assert reached == []


async def test_no_shadow_and_no_fallback_add_no_coroutine() -> None:
    async def answer() -> web.StreamResponse:
        return web.Response(text="ok")

    pending: Any = answer()
    try:
        route: Any = type("R", (), {"deployment": None})()
        assert ShadowTap(None, lambda name: None).around(None, route, "/v1/x", {}, pending) is pending  # type: ignore[arg-type]
    finally:
        pending.close()
