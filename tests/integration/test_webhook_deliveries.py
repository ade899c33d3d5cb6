"""Webhooks on a real registry (SQLite and Postgres) against a real HTTP receiver on loopback: events become
signed deliveries, failures are retried with backoff until delivered or failed, nothing is sent twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from superollama.control import SecretBox
from superollama.control.webhooks import WebhookManager
from superollama.core import EventRecord
from superollama.core.signing import SIGNATURE_HEADER, verify_signature
from superollama.errors import InvalidRequest, NotFound
from superollama.registry import Registry, open_registry


@dataclass
class Receiver:
    """An HTTP server that records what it is sent and answers ``statuses`` in turn (then 204)."""

    statuses: list[int] = field(default_factory=list)
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 204
        return web.Response(status=status, headers={"Retry-After": "0"} if status == 503 else None)

    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(body) for _, body in self.got]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.url = f"http://127.0.0.1:{port}/hook"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def registry(db_url: str) -> AsyncIterator[Registry]:
    reg = await open_registry(db_url)
    yield reg
    await reg.close()


@pytest.fixture
async def manager(registry: Registry, tmp_path: Path) -> AsyncIterator[WebhookManager]:
    mgr = WebhookManager(registry, SecretBox.of_home(tmp_path), max_attempts=3, timeout=5)
    yield mgr
    await mgr.close()


async def _until(manager: WebhookManager, done: Any, deadline: float = 20.0) -> None:
    """Run the leader's rounds until ``done()`` (backoff waits are real: 1 s, then 2 s)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not done():
        assert loop.time() < end, "the deliveries did not settle in time"
        await manager.tick()
        await asyncio.sleep(0.2)


async def test_events_are_delivered_signed_once_each(
    registry: Registry, manager: WebhookManager, receiver: Receiver
) -> None:
    await registry.events.add(EventRecord("model.pull", "before:hook"))  # before the hook: never sent
    await manager.tick()  # the first round starts from the end of the log
    hook, secret = await manager.add(receiver.url, ["deployment.*", "model.pull"], description="ops")
    assert secret.startswith("whsec_") and hook.secret != secret  # stored sealed, never as given
    await registry.events.add(EventRecord("deployment.promote", "chat", detail={"stage": "staging"}))
    await registry.events.add(EventRecord("key.create", "k1"))  # not asked for
    await registry.events.add(EventRecord("model.pull", "smollm2:135m", actor="cli"))
    await _until(manager, lambda: len(receiver.got) >= 2)
    for _ in range(3):  # later rounds re-read the window below the cursor and send nothing again
        await manager.tick()
    # one round sends a hook's deliveries concurrently: they arrive in any order (as Stripe's and GitHub's
    # do; each carries its event's id and time), each exactly once
    assert sorted(b["type"] for b in receiver.bodies()) == ["deployment.promote", "model.pull"]
    [first] = [b for b in receiver.bodies() if b["type"] == "deployment.promote"]
    assert first["data"] == {
        "target": "chat",
        "result": "ok",
        "actor": "system",
        "detail": {"stage": "staging"},
    }
    assert first["id"].startswith("evt_") and first["created_at"]
    for headers, body in receiver.got:
        assert verify_signature(secret, body, headers[SIGNATURE_HEADER])
        assert not verify_signature("whsec_another-secret-entirely", body, headers[SIGNATURE_HEADER])
        assert not verify_signature(secret, body + b" ", headers[SIGNATURE_HEADER])
        assert headers["X-Superollama-Event"] in {"deployment.promote", "model.pull"}
    log = await manager.deliveries(hook.id, limit=10, state=None)
    assert [(d.action, d.state, d.attempts, d.status_code) for d in log] == [
        ("model.pull", "delivered", 1, 204),
        ("deployment.promote", "delivered", 1, 204),
    ]
    assert {headers["X-Superollama-Delivery"] for headers, _ in receiver.got} == {str(d.id) for d in log}


async def test_failures_are_retried_with_backoff_then_delivered_or_failed(
    registry: Registry, manager: WebhookManager, receiver: Receiver
) -> None:
    await manager.tick()
    hook, secret = await manager.add(receiver.url, ["instance.*"])
    receiver.statuses = [500, 503]  # two refusals, then 204
    await registry.events.add(EventRecord("instance.crashed", "smollm2:135m", result="failed"))
    await _until(manager, lambda: len(receiver.got) >= 3)
    [delivered] = await manager.deliveries(hook.id, limit=5, state=None)
    assert (delivered.state, delivered.attempts, delivered.status_code) == ("delivered", 3, 204)
    bodies = {body for _, body in receiver.got}
    assert len(bodies) == 1  # the same body every attempt, each freshly signed
    assert all(verify_signature(secret, body, h[SIGNATURE_HEADER]) for h, body in receiver.got)

    receiver.got.clear()
    receiver.statuses = [500, 500, 500]  # max_attempts=3: then it is failed
    await registry.events.add(EventRecord("instance.load", "smollm2:135m"))
    await _until(manager, lambda: len(receiver.got) >= 3)
    for _ in range(2):
        await manager.tick()
    failed = (await manager.deliveries(hook.id, limit=5, state="failed"))[0]
    assert (failed.action, failed.attempts, failed.status_code, failed.error) == (
        "instance.load",
        3,
        500,
        "HTTP 500",
    )
    assert len(receiver.got) == 3


async def test_an_unreachable_receiver_and_a_disabled_hook(
    registry: Registry, manager: WebhookManager, receiver: Receiver
) -> None:
    await manager.tick()
    dead, _ = await manager.add("http://127.0.0.1:9/never", ["model.*"])  # discard port: refused
    await registry.events.add(EventRecord("model.remove", "x:1"))
    await manager.tick()
    [pending] = await manager.deliveries(dead.id, limit=5, state=None)
    assert pending.state == "pending" and pending.attempts == 1 and pending.status_code is None
    assert pending.error and "Connect" in pending.error

    live, _ = await manager.add(receiver.url, ["model.*"])
    await manager.change(live.id, {"enabled": False})
    await registry.events.add(EventRecord("model.copy", "x:2"))
    await manager.tick()
    assert receiver.got == [] and await manager.deliveries(live.id, limit=5, state=None) == []
    hook, secret = await manager.change(live.id, {"enabled": True, "rotate_secret": True})
    assert hook.enabled and secret is not None
    ping = await manager.ping(live.id)
    assert (ping.action, ping.state, ping.status_code) == ("webhook.ping", "delivered", 204)
    headers, body = receiver.got[-1]
    assert verify_signature(secret, body, headers[SIGNATURE_HEADER])
    assert orjson.loads(body)["data"] == {"webhook_id": live.id}


async def test_bad_input_is_refused_clearly(manager: WebhookManager) -> None:
    for url in ("", "ftp://example.com/x", "http://", 42):
        with pytest.raises(InvalidRequest) as info:
            await manager.add(url)
        assert info.value.param == "url"
    with pytest.raises(InvalidRequest, match="non-empty list"):
        await manager.add("http://127.0.0.1:1/x", [])
    with pytest.raises(InvalidRequest, match="not an event type"):
        await manager.add("http://127.0.0.1:1/x", ["model pull; drop"])
    with pytest.raises(InvalidRequest, match="at least 16"):
        await manager.add("http://127.0.0.1:1/x", secret="short")
    hook, _ = await manager.add("http://127.0.0.1:1/x")
    assert hook.events == ("*",)
    with pytest.raises(InvalidRequest, match="unknown field 'colour'"):
        await manager.change(hook.id, {"colour": "red"})
    with pytest.raises(NotFound):
        await manager.change("wh_nope", {"enabled": False})
    with pytest.raises(NotFound):
        await manager.remove("wh_nope")
    await manager.remove(hook.id)
    assert await manager.all() == []
