"""A connection whose URL carries secrets, through the real ``ConnectionManager``, registry, providers and
data-plane client, against a loopback server that insists on those secrets: the routing snapshot (what
the primary pushes to replica workers) names the credential and never carries it; whoever sends attaches
it from its own process's store."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from superollama.control import ConnectionManager, CredentialStore, RoutingTable, SecretBox
from superollama.errors import UpstreamError
from superollama.gateway.h1 import H1Client
from superollama.gateway.upstream import post_to_backend
from superollama.plugins import load_plugins
from superollama.registry import Registry, open_registry
from superollama.workers.snapshot import decode_table, table_json

PASSWORD, API_KEY = "TOPSECRETPW", "K3Y-in-the-query"
BASIC = "Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, API_KEY, BASIC.split()[1])


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """An OpenAI-compatible server on loopback that answers only with bob's credentials; its address."""

    @web.middleware
    async def guard(request: web.Request, handler: object) -> web.StreamResponse:
        if request.headers.get("Authorization") != BASIC or request.query.get("api-key") != API_KEY:
            return web.json_response({"error": {"message": "bad credentials"}}, status=401)
        return await handler(request)  # type: ignore[operator,no-any-return]

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "echo-1"}]})

    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"object": "chat.completion", "choices": []})

    app = web.Application(middlewares=[guard])
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    async with await open_registry(f"sqlite:///{tmp_path / 'registry.db'}") as reg:
        yield reg


async def _manager(registry: Registry, box: SecretBox, session: aiohttp.ClientSession) -> ConnectionManager:
    store = CredentialStore()
    manager = ConnectionManager(registry, load_plugins().providers(session, store), box, credentials=store)
    await manager.start()
    return manager


async def test_the_snapshot_names_the_credential_and_senders_attach_it(
    upstream: str, registry: Registry, tmp_path: Path
) -> None:
    box = SecretBox(tmp_path / "secret.key")
    async with aiohttp.ClientSession() as session:
        manager = await _manager(registry, box, session)
        try:
            url = f"http://bob:{PASSWORD}@{upstream}/v1?api-key={API_KEY}"
            state = await manager.add("openai", url, name="cred")
            assert state.healthy and state.models == ["echo-1"], state.error  # discovery sent them
            assert state.as_dict()["url"] == f"http://***@{upstream}/v1?api-key=***"
            table = RoutingTable.build(manager.routes(), 1)
        finally:
            await manager.close()

        # what the primary pushes to its replicas
        pushed = orjson.dumps(table_json(table)).decode()
        for secret in SECRETS:
            assert secret not in pushed
        target = decode_table(orjson.loads(pushed)).routes["cred/echo-1"].targets[0]
        assert target.endpoint.credential == "cred" and target.endpoint.headers == ()
        assert target.endpoint.base_url == f"http://{upstream}"

        # a worker sends with its own store: the primary's, or a replica's copy of it
        from tests.doubles import NoCounts, NoStarter

        from superollama.gateway.lease import Lease

        route = decode_table(orjson.loads(pushed)).routes["cred/echo-1"]
        lease = Lease(route, target, NoStarter(), NoCounts())
        replica_store = CredentialStore()
        client = H1Client()
        try:
            with pytest.raises(UpstreamError, match="credential of connection 'cred' is not loaded"):
                await post_to_backend(
                    client, lease, "/v1/chat/completions", b"{}", 10, credentials=replica_store
                )
            replica_store.load_json(json.loads(json.dumps(manager.credentials.to_json())))
            async with await post_to_backend(
                client, lease, "/v1/chat/completions", b"{}", 10, credentials=replica_store
            ) as answer:
                assert answer.status == 200
        finally:
            lease.release()
            await client.close()

        # a restart reads the credential back from the registry (encrypted there)
        again = await _manager(registry, box, session)
        try:
            assert again.get("cred").healthy
        finally:
            await again.close()
    stored = await registry.connections.get("cred")
    assert stored.url == f"http://{upstream}/v1" and stored.url_secret is not None
    for secret in SECRETS:
        assert secret not in repr(stored)


async def test_a_url_credential_and_an_api_key_together_are_refused(
    registry: Registry, tmp_path: Path
) -> None:
    from superollama.errors import InvalidRequest

    async with aiohttp.ClientSession() as session:
        manager = await _manager(registry, SecretBox(tmp_path / "secret.key"), session)
        try:
            with pytest.raises(InvalidRequest, match="not both"):
                await manager.add("openai", "http://bob:pw@127.0.0.1:9/v1", name="x", api_key="sk-1")
        finally:
            await manager.close()
    assert await registry.connections.find("x") is None


async def test_a_backend_that_cannot_be_reached_is_named_without_its_address() -> None:
    from tests.doubles import NoCounts, NoStarter

    from superollama.control import Route, RouteTarget
    from superollama.core import Endpoint
    from superollama.gateway.lease import Lease
    from superollama.gateway.upstream import Upstream

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens there now: connection refused
    target = RouteTarget("conn:x/m", Endpoint(f"http://127.0.0.1:{port}", "openai", "m"))
    route = Route("x/m", "x/m", True, 0, (target,), connection="x")  # a connection's: never replaced
    lease = Lease(route, target, NoStarter(), NoCounts())
    client = H1Client()
    try:
        with pytest.raises(UpstreamError) as info:
            await Upstream(client, 10).post(lease, "/v1/chat/completions", {})
    finally:
        await client.close()
    assert "cannot connect" in info.value.message and str(port) not in info.value.message


async def test_users_read_the_kind_of_failure_and_admins_the_full_reason(
    registry: Registry, tmp_path: Path
) -> None:
    """A proxy in front of the server answers 502 with its own text (an internal address): the admin
    API's ``error`` keeps that text, what a data-plane client reads (``Route.unavailable``) does not."""

    async def models(request: web.Request) -> web.Response:
        return web.Response(status=502, text="no route to upstream 10.1.2.3:8000")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        async with aiohttp.ClientSession() as session:
            manager = await _manager(registry, SecretBox(tmp_path / "secret.key"), session)
            try:
                state = await manager.add("openai", url, name="proxied")
            finally:
                await manager.close()
    finally:
        await runner.cleanup()
    assert not state.healthy and state.error is not None and "10.1.2.3:8000" in state.error
    assert state.failure == "connection 'proxied' is unavailable: GET /v1/models answered HTTP 502"
