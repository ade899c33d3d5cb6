"""A replica's link to the primary (see ``primary`` for the protocol), and what the replica's data plane
sees of it: the ``InstanceStarter`` and ``InstanceAccounting`` of the gateway's ``ModelTargets``.

Upstream credentials come in ``state`` messages too, next to (never inside) the snapshot, and are kept in
``credentials``, in memory only (``control.credentials``).

The watch WebSocket is opened at start and re-opened (0.1 s doubling to 0.5 s) whenever it drops (the
primary restarting): the replica keeps serving from its last snapshot meanwhile. Request accounting
stays local and synchronous (a dict update per request); an instance whose count leaves or reaches zero
wakes the reporter, which sends at most one ``activity`` message per 20 ms, and one per second anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, Protocol

import aiohttp
import orjson

from superollama import errors
from superollama.control import CredentialStore, Route, RouteTarget, RoutingHolder, RoutingTable
from superollama.errors import LoadTimeout, SuperOllamaError, Unavailable
from superollama.workers.context import WORKER_HEADER, WorkerContext
from superollama.workers.snapshot import decode_table, decode_target

__all__ = ["PrimaryLink", "ReplicaServices", "error_from_json"]

log = logging.getLogger("superollama.workers")

_REPORT_EVERY = 1.0
_REPORT_SPACING = 0.02
_RECONNECT_FIRST = 0.1
_RECONNECT_MAX = 0.5
_BASE = "http://primary"


class ReplicaServices(Protocol):
    """What the primary asks of a replica over the watch channel."""

    def reload_keys(self) -> Awaitable[object]: ...

    def render_metrics(self) -> bytes: ...

    def flush_usage(self) -> Awaitable[int]: ...


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
    def __init__(self, ctx: WorkerContext, holder: RoutingHolder, *, load_timeout: float) -> None:
        self.holder = holder
        self.credentials = CredentialStore()  # upstream credentials from the primary, in memory only
        self.services: ReplicaServices | None = None
        self._ctx = ctx
        self._load_timeout = load_timeout
        self._counts: dict[str, int] = {}
        self._used: set[str] = set()
        self._keep: dict[str, float | None] = {}
        self._holds: list[int] = []
        self._urgent = asyncio.Event()
        self._ready = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(ctx.paths.control), limit=0),
            headers={WORKER_HEADER: str(ctx.index)},
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch(), name="primary-watch"),
            asyncio.create_task(self._report(), name="primary-report"),
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
        return self._counts.get(instance_id, 0)

    def acquire(self, instance_id: str) -> None:
        count = self._counts.get(instance_id, 0) + 1
        self._counts[instance_id] = count
        self._used.add(instance_id)
        if count == 1:
            self._urgent.set()

    def release(self, instance_id: str) -> None:
        count = self._counts.get(instance_id, 0) - 1
        if count > 0:
            self._counts[instance_id] = count
        else:
            self._counts.pop(instance_id, None)
            self._urgent.set()

    def set_keep_alive(self, version: str, seconds: float | None) -> None:
        self._keep[version] = seconds

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
            # The primary counts the target as in use until a report says we have it: the caller acquires
            # it right after this returns, before the reporter can run, so that report carries it.
            self._holds.append(int(hold))
        return target

    async def _post(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            async with self._session.post(
                _BASE + path, data=orjson.dumps(body), timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise LoadTimeout("the primary worker did not answer in time", retry_after=5) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Unavailable("the primary worker is restarting; try again", retry_after=1) from exc
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if status != 200 or not isinstance(data, dict):
            raise error_from_json(data, status)
        return data

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
                log.warning("lost the primary worker; reconnecting (connections' models are still served)")
                self.holder.publish(_without_instances(self.holder.table))
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
            if data.get("keys") and services is not None:
                await services.reload_keys()
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
            used, self._used = list(self._used), set()
            keep, self._keep = self._keep, {}
            holds, self._holds = self._holds, []
            activity = {"in_flight": self._counts, "used": used, "keep_alive": keep, "holds": holds}
            await ws.send_bytes(orjson.dumps({**message, **activity}))

    async def _report(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), _REPORT_EVERY)
            self._urgent.clear()
            with contextlib.suppress(aiohttp.ClientError, OSError, ConnectionError):
                await self._send({"op": "activity"})
            await asyncio.sleep(_REPORT_SPACING)


def _without_instances(table: RoutingTable) -> RoutingTable:
    """The snapshot less the primary's instances: they may be gone with it (a restart kills them), so
    until the primary is back a request for them asks it (a clear 503 while it restarts), while the
    models of connections (servers we do not run) keep their targets."""
    routes = [r if r.connection is not None else replace(r, targets=()) for r in table.routes.values()]
    return RoutingTable.build(routes, table.generation)
