"""``superollama.Client`` and ``AsyncClient`` against a real in-process server (``create_app`` on a
loopback port): typed answers, progress iteration, typed errors with one-line messages, keys, and the
retry policy (against a small aiohttp app that fails on purpose: a stand-in for a server restarting)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from superollama import AsyncClient, Client, SuperollamaError
from superollama.app import create_app
from superollama.client import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
)
from superollama.settings import Settings


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[TestServer]:
    app = await create_app(Settings(home=tmp_path / "home", bundled_model=False))
    async with TestServer(app) as srv:
        yield srv


def _url(srv: TestServer) -> str:
    return str(srv.make_url("/"))


async def test_async_client_pulls_with_progress_and_manages_the_version(
    server: TestServer, smollm2_gguf: Path
) -> None:
    async with AsyncClient(_url(server), api_key="") as so:
        assert await so.reachable()
        assert await so.models.list() == []
        lines = [line async for line in so.models.pull(smollm2_gguf.as_uri(), name="tiny:q4")]
        assert lines[0].get("job"), lines[0]  # the first line names the job
        assert lines[-1]["status"] == "success", lines[-1]
        names = [v["name"] for v in await so.models.list()]
        assert names == ["tiny:q4"]
        details = await so.models.get("tiny:q4")
        assert details["format"] == "gguf" and details["layers"] and details["instances"] == []
        copied = await so.models.copy("tiny:q4", "other:1")
        assert copied["name"] == "other:1" and copied["digest"] == details["digest"]
        assert (await so.models.disable("other:1"))["enabled"] is False
        assert [v["name"] for v in await so.models.list(enabled=False)] == ["other:1"]
        assert (await so.models.enable("other:1"))["enabled"] is True
        assert await so.models.unload("other:1") is False  # nothing was running
        assert (await so.models.delete("other:1"))["deleted"] == "other:1"
        jobs = await so.jobs.list()
        assert jobs[0]["kind"] == "pull" and jobs[0]["state"] == "succeeded"
        assert (await so.jobs.get(jobs[0]["id"]))["id"] == jobs[0]["id"]
        watched = [line async for line in so.jobs.watch(jobs[0]["id"])]
        assert watched[-1]["status"] == "success"
        actions = {e["action"] for e in await so.events.list(target="other:1")}
        assert {"model.copy", "model.disable", "model.enable", "model.remove"} <= actions, actions
        roots = await so.storage.list()
        assert roots[0]["versions"] == ["tiny:q4"]
        live = so.events.stream(backlog=3, target="other:1")
        backlog = [await anext(live) for _ in range(3)]  # the three latest, oldest first
        await live.aclose()
        assert [e["action"] for e in backlog] == ["model.disable", "model.enable", "model.remove"]
        # with a timeout the server ends the stream: the loop ends by itself
        window = [e async for e in so.events.stream(backlog=1, target="other:1", timeout=0.5)]
        assert [e["action"] for e in window] == ["model.remove"]


async def test_sync_client_reads_and_writes_the_same_api(server: TestServer) -> None:
    def scenario() -> None:
        with Client(_url(server), api_key="") as so:
            # the data plane's files first: once a key exists, /v1 wants one
            uploaded = so.files.upload(b"hello world", filename="hello.txt")
            assert uploaded["bytes"] == 11 and so.files.content(uploaded["id"]) == b"hello world"
            assert [f["id"] for f in so.files.list()] == [uploaded["id"]]
            so.files.delete(uploaded["id"])
            key = so.keys.create("ci", role="user", rpm=10)
            assert key["key"].startswith("so-") and key["rpm"] == 10
            assert [k["name"] for k in so.keys.list()] == ["ci"]
            assert so.keys.get(key["prefix"])["id"] == key["id"]
            rotated = so.keys.rotate(key["id"])
            assert rotated["key"] != key["key"] and rotated["id"] == key["id"]
            assert so.keys.revoke(key["id"])["state"] == "revoked"
            hook = so.webhooks.create("http://127.0.0.1:9/hook", events=["key.*"], description="ci")
            assert hook["secret"] and hook["events"] == ["key.*"]
            assert so.webhooks.update(hook["id"], enabled=False)["enabled"] is False
            assert [h["id"] for h in so.webhooks.list()] == [hook["id"]]
            assert so.webhooks.deliveries(hook["id"]) == []
            assert so.webhooks.delete(hook["id"]) == {"deleted": hook["id"]}
            assert so.usage.get(by="day")["rows"] == []
            assert so.instances.list() == [] and so.deployments.list() == [] and so.connections.list() == []
            assert so.nodes.list()[0]["local"] is True
            assert "gateways" in so.gateways.list()
            assert "superollama.builtin" in {p["name"] for p in so.plugins.list()}
            assert so.grounding.list() == []
            assert "spec" not in so.fleet.export()

    await asyncio.to_thread(scenario)


async def test_errors_are_typed_with_status_code_and_one_line(server: TestServer) -> None:
    async with AsyncClient(_url(server), api_key="") as so:
        with pytest.raises(NotFoundError) as missing:
            await so.models.get("nope:1")
        assert missing.value.status == 404 and "nope:1" in missing.value.message
        assert missing.value.code == "model_not_found", missing.value.code
        assert "\n" not in str(missing.value)
        with pytest.raises(BadRequestError) as bad:
            await so.keys.create("k", rpm="ten")
        assert bad.value.status == 400 and "rpm" in bad.value.message and bad.value.code
        with pytest.raises(SuperollamaError) as unknown:
            await so.deployments.put("d", ["nope:1=100"])
        assert 400 <= unknown.value.status < 500
        user = (await so.keys.create("app"))["key"]
        admin = (await so.keys.create("ops", role="admin"))["key"]
    async with AsyncClient(_url(server), api_key="", max_retries=0) as anonymous:
        with pytest.raises(AuthenticationError) as no_key:
            await anonymous.models.list()
        assert no_key.value.status == 401
    async with AsyncClient(_url(server), api_key=user) as as_user:
        with pytest.raises(PermissionDeniedError) as denied:
            await as_user.models.list()
        assert denied.value.status == 403 and denied.value.code == "admin_required"
    async with AsyncClient(_url(server), api_key=admin) as as_admin:
        assert await as_admin.models.list() == []


async def test_a_server_that_is_not_there_is_a_connection_error() -> None:
    with socket_port() as port:
        pass  # closed again: nothing listens there
    so = Client(f"http://127.0.0.1:{port}", api_key="", max_retries=1)
    with pytest.raises(APIConnectionError) as gone:
        await asyncio.to_thread(so.models.list)
    assert gone.value.status == 0 and "is `superollama serve` running?" in gone.value.message
    assert not await asyncio.to_thread(so.reachable)
    so.close()


class _Flaky:
    """Answers 503 (with Retry-After: 0) ``failures`` times, then 200: a server that is restarting."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.hits: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.method)
        if len(self.hits) <= self.failures:
            body = {"error": {"message": "busy", "type": "server_error", "code": "busy"}}
            return web.json_response(body, status=503, headers={"Retry-After": "0"})
        return web.json_response({"models": [], "jobs": []})


async def test_retries_only_calls_that_may_be_repeated() -> None:
    flaky = _Flaky(failures=2)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", flaky.handle)
    async with TestServer(app) as srv, AsyncClient(_url(srv), api_key="", max_retries=2) as so:
        assert await so.models.list() == []  # GET: tried three times
        assert flaky.hits == ["GET", "GET", "GET"]
        flaky.hits.clear()
        with pytest.raises(ServerError) as busy:
            await so.models.copy("a:1", "b:1")  # POST: once, never repeated
        assert flaky.hits == ["POST"] and busy.value.status == 503 and busy.value.code == "busy"


class socket_port:
    """A loopback port that was free a moment ago."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()
