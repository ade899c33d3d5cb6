"""A replica's link to the primary (see ``primary`` for the protocol): the replica's ``ControlPlaneClient``
(``control/plane.py``), so also the ``InstanceStarter`` and ``InstanceAccounting`` of its ``ModelTargets``.

Upstream credentials come in ``state`` messages too, next to (never inside) the snapshot, and are kept in
``credentials``, in memory only (``control.credentials``).

The watch WebSocket is opened at start and re-opened (0.1 s doubling to 0.5 s) whenever it drops (the
primary restarting): the replica keeps serving from its last snapshot meanwhile, instances included —
they belong to the agent process, not to the primary, so they outlive it. Request accounting stays
local (``workers.activity``) and rides on every message to the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable
from typing import Any, Protocol

import aiohttp
import orjson

from superollama import errors
from superollama.control import (
    CredentialStore,
    KeyListeners,
    KeysListener,
    Route,
    RouteTarget,
    RoutingHolder,
)
from superollama.errors import LoadTimeout, SuperOllamaError, Unavailable
from superollama.workers.activity import ActivityReporter
from superollama.workers.context import WORKER_HEADER, WorkerContext
from superollama.workers.snapshot import decode_table, decode_target

__all__ = ["PrimaryLink", "ReplicaServices", "error_from_json", "post_json"]

log = logging.getLogger("superollama.workers")

_RECONNECT_FIRST = 0.1
_RECONNECT_MAX = 0.5
_BASE = "http://primary"


class ReplicaServices(Protocol):
    """What the primary asks of a replica over the watch channel (key reloads go through the seam's
    ``on_keys_changed``)."""

    def render_metrics(self) -> bytes: ...

    def flush_usage(self) -> Awaitable[int]: ...


async def post_json(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout: float, *, peer: str
) -> dict[str, Any]:
    """POST ``body`` to a sibling process's internal API; its answer, or the error it answered with (the
    same class of our tree), or a 503 while it cannot be reached (restarting)."""
    try:
        async with session.post(
            url, data=orjson.dumps(body), timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            raw = await resp.read()
            status = resp.status
    except TimeoutError:
        raise LoadTimeout(f"{peer} did not answer in time", retry_after=5) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise Unavailable(f"{peer} is restarting; try again", retry_after=1) from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if status != 200 or not isinstance(data, dict):
        raise error_from_json(data, status)
    return data


def error_from_json(data: Any, status: int) -> SuperOllamaError:
    """The error the primary answered with, as the same class of our tree."""
    info = data.get("error") if isinstance(data, dict) else None
    if not isinstance(info, dict):
        return Unavailable(f"the primary worker answered {status}", retry_after=1)
    message = str(info.get("message") or "error")
    cls = getattr(errors, str(info.get("class")), None)
    kwargs = {"param": info.get("param"), "retry_after": info.get("retry_after")}
    if isinstance(cls, type) and issubclass(cls, SuperOllamaError):
        with contextlib.suppress(TypeError):
            return cls(message, **kwargs)
    err = SuperOllamaError(message, **kwargs)
    err.status = int(info.get("status") or status)
    return err


class PrimaryLink:
    """``ControlPlaneClient`` of a replica worker: everything through its primary."""

    def __init__(self, ctx: WorkerContext, holder: RoutingHolder, *, load_timeout: float) -> None:
        self._holder = holder
        self._credentials = CredentialStore()  # upstream credentials from the primary, in memory only
        self._keys = KeyListeners()
        self.services: ReplicaServices | None = None
        self._ctx = ctx
        self._load_timeout = load_timeout
        self._activity = ActivityReporter()
        self._ready = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(ctx.paths.control), limit=0),
            headers={WORKER_HEADER: str(ctx.index)},
        )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def holder(self) -> RoutingHolder:
        return self._holder

    @property
    def credentials(self) -> CredentialStore:
        return self._credentials

    def on_keys_changed(self, listener: KeysListener) -> None:
        self._keys.add(listener)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch(), name="primary-watch"),
            asyncio.create_task(self._activity.run(self._send), name="primary-report"),
        ]

    async def wait_ready(self) -> None:
        """Until the first snapshot from the primary is applied."""
        await self._ready.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        await self._session.close()

    # -- InstanceAccounting (hot path: no I/O) -------------------------------------------------------
    def in_flight(self, instance_id: str) -> int:
        return self._activity.in_flight(instance_id)

    def acquire(self, instance_id: str) -> None:
        self._activity.acquire(instance_id)

    def release(self, instance_id: str) -> None:
        self._activity.release(instance_id)

    def set_keep_alive(self, version: str, seconds: float | None) -> None:
        self._activity.set_keep_alive(version, seconds)

    def expires_in(self, version: str) -> float | None:
        return None  # /api/ps is answered by the primary

    async def unload(self, version: str, *, reason: str = "requested") -> bool:
        data = await self._post("/internal/unload", {"version": version, "reason": reason}, 60.0)
        return bool(data.get("unloaded"))

    # -- InstanceStarter -----------------------------------------------------------------------------
    async def ensure_ready(self, route: Route) -> RouteTarget:
        target = await self._ensure({"model": route.name})
        if target is None:  # the primary answers a plain ensure with a target or an error
            raise Unavailable(f"no instance of {route.name!r} is ready", retry_after=1)
        return target

    async def replace(self, route: Route, failed: str, *, reached: bool) -> RouteTarget | None:
        return await self._ensure({"model": route.name, "failed": failed, "reached": reached})

    async def _ensure(self, body: dict[str, Any]) -> RouteTarget | None:
        data = await self._post("/internal/ensure", body, self._load_timeout + 15)
        if data.get("target") is None:
            return None
        target = decode_target(data["target"])
        hold = data.get("hold")
        if hold is not None:
            self._activity.hold(int(hold))
        return target

    async def _post(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await post_json(self._session, _BASE + path, body, timeout, peer="the primary worker")

    # -- the watch channel -----------------------------------------------------------------------------
    async def _watch(self) -> None:
        delay = _RECONNECT_FIRST
        had = False  # a connection before this one (to log the reconnection)
        while True:
            connected = False
            try:
                async with self._session.ws_connect(_BASE + "/internal/watch", max_msg_size=0) as ws:
                    self._ws, connected = ws, True
                    await self._send({"op": "hello", "worker": self._ctx.index, "pid": os.getpid()})
                    if had:
                        log.info("reconnected to the primary worker")
                    delay, had = _RECONNECT_FIRST, True
                    async for message in ws:
                        if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            break
                        await self._received(orjson.loads(message.data))
            except (aiohttp.ClientError, OSError, ConnectionError) as exc:
                log.debug("watch connection: %r", exc)
            finally:
                self._ws = None
            if connected:
                log.warning(
                    "lost the primary worker; reconnecting (serving from the last snapshot meanwhile)"
                )
            await asyncio.sleep(delay)
            delay = min(_RECONNECT_MAX, delay * 2)

    async def _received(self, data: dict[str, Any]) -> None:
        op, seq = data.get("op"), data.get("seq")
        services = self.services
        if op == "state":
            credentials = data.get("credentials")
            if isinstance(credentials, dict):
                self.credentials.load_json(credentials)  # before a snapshot that may name them
            table = data.get("table")
            if table is not None:
                self.holder.publish(decode_table(table))
            if data.get("keys"):
                await self._keys.notify()
            self._ready.set()
            await self._send({"op": "ack", "seq": seq})
        elif op == "metrics":
            body = services.render_metrics().decode() if services is not None else ""
            await self._send({"op": "reply", "seq": seq, "body": body})
        elif op == "flush":
            written = await services.flush_usage() if services is not None else 0
            await self._send({"op": "reply", "seq": seq, "written": written})

    async def _send(self, message: dict[str, Any]) -> None:
        """Send on the watch channel; every message carries this replica's activity."""
        ws = self._ws
        if ws is None:
            return
        async with self._send_lock:
            await ws.send_bytes(orjson.dumps({**message, **self._activity.take()}))
