"""The primary worker's side of ``serve --workers N``: it keeps every replica's state in step with its own.

The primary runs the whole app (agent, controller, admin API) and its ``LocalControlPlane``; this hub
serves that same ``ControlPlaneClient`` seam (``control/plane.py``) to the replicas, whose
``workers.link.PrimaryLink`` is its other side. Key changes the plane reports (made here, or through
another gateway and brought by the change feed) reach every replica as ``keys``. On ``control.sock``:

- ``GET /internal/watch``: one WebSocket per replica, for its whole life. Primary → replica: ``state``
  messages (the routing snapshot when it changed, ``keys`` when the key cache must be reloaded,
  ``credentials`` when the upstream credentials changed: see ``control.credentials``; never logged), and
  ``metrics`` / ``flush`` requests. Replica → primary: ``activity`` (its in-flight count per instance,
  the instances it used, keep-alive changes) and ``ack``s, which carry the same activity.
- ``POST /internal/ensure``: scale from zero for a replica (the primary's own path: same bounded wait,
  same 503 + ``Retry-After``); with ``failed`` (an instance id) and ``reached``, a replacement for an
  instance that did not answer, or ``{"target": null}`` when the request must not be sent again.
- ``POST /internal/unload``: ``keep_alive: 0`` of an Ollama request served by a replica.

Propagation bound: an admin call that changes state (any non-GET ``/admin/…``, ``/api/pull|copy|delete``)
returns only after every connected replica has applied the resulting snapshot (and reloaded its keys
for ``/admin/v1/keys…``) and acknowledged it, or after 5 s (logged). Snapshots from anything else (a
model loaded or unloaded, a connection refreshed) are pushed at once, without waiting.

In-flight accounting: replica counts are added to the agent's own (``acquire``/``release``), so idle
unloading, draining and ``/api/ps`` see every worker's requests. A snapshot that removes an instance
*fences* it: the agent counts one request per replica on it until that replica acknowledged the snapshot
(after which it no longer picks the instance, and its ack reports what it still has in flight there).
So an instance never stops while a replica may still send to it. A target handed out by ``ensure`` is
held the same way until the replica reports it. A replica that disconnects gives everything back.

``/metrics`` on the primary sums every worker's series; ``GET /admin/v1/usage`` first asks every replica
to write its pending ledger rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from superollama.control import ControlPlaneClient, RoutingTable
from superollama.errors import SuperOllamaError
from superollama.gateway.openai_routes import ModelTargets
from superollama.telemetry import Telemetry
from superollama.workers.activity import ActivityLedger, Holds
from superollama.workers.context import FORWARDED_CLIENT, WORKER_HEADER, WorkerContext
from superollama.workers.metrics import merge_expositions
from superollama.workers.snapshot import table_json

__all__ = ["PrimaryHub", "error_json"]

log = logging.getLogger("superollama.workers")

SYNC_TIMEOUT = 5.0
CALL_TIMEOUT = 5.0
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_MANAGEMENT = frozenset({"/api/pull", "/api/copy", "/api/delete", "/api/create", "/api/push"})
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_json(exc: SuperOllamaError) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "class": type(exc).__name__,
                "message": exc.message,
                "param": exc.param,
                "retry_after": exc.retry_after,
                "status": exc.status,
            }
        }
    )


@dataclass(eq=False)
class _Replica:
    index: int
    pid: int
    ws: web.WebSocketResponse
    ledger: ActivityLedger  # its in-flight counts, added to the agent's
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    seq: int = 0  # of the last message sent
    acked: int = 0
    sent_generation: int = -1
    sent_credentials: int = -1  # the version of the credentials last sent
    acks: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)
    replies: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    unfenced: list[str] = field(default_factory=list)  # fenced, not yet tied to a sent snapshot
    fences: list[tuple[int, list[str]]] = field(default_factory=list)  # (seq that carries it, ids)


class PrimaryHub:
    def __init__(
        self,
        ctx: WorkerContext,
        plane: ControlPlaneClient,
        targets: ModelTargets,
        telemetry: Telemetry,
    ) -> None:
        self._ctx = ctx
        self._credentials = plane.credentials
        self._holder = holder = plane.holder
        self._targets = targets
        self._agent = plane  # the replicas' counts are added to this process's
        self._telemetry = telemetry
        self._replicas: set[_Replica] = set()
        self._ids = _instance_ids(holder.table)
        self._holds = Holds(plane)  # ensure holds, until the replica reports the target
        self._push: asyncio.Task[None] | None = None
        self._push_again = False
        self._runner: web.AppRunner | None = None
        holder.subscribe(self._published)
        plane.on_keys_changed(self._keys_changed)

    # -- wiring ----------------------------------------------------------------------------------------
    def install(self, app: web.Application) -> None:
        """Add to the primary's app: merged ``/metrics``, the worker header, the client address of proxied
        requests, the admin-call barrier, and the control socket's start and stop."""
        app.router.add_get("/metrics", self.metrics)
        self._ctx.add_worker_header(app)
        app.middlewares.insert(0, self._forwarded_client())
        app.middlewares.append(self._barrier())
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._close)

    async def _start(self, _app: web.Application) -> None:
        control = web.Application()
        control.router.add_get("/internal/watch", self._watch)
        control.router.add_post("/internal/ensure", self._ensure)
        control.router.add_post("/internal/unload", self._unload)
        self._runner = web.AppRunner(control, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        path = self._ctx.paths.control
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        await web.UnixSite(self._runner, str(path)).start()
        path.chmod(0o600)

    async def _close(self, _app: web.Application) -> None:
        if self._push is not None:
            self._push.cancel()
        for replica in list(self._replicas):
            await replica.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _forwarded_client(self) -> Any:
        @web.middleware
        async def forwarded_client(request: web.Request, handler: Handler) -> web.StreamResponse:
            client = request.headers.get(FORWARDED_CLIENT)
            transport = request.transport
            # trusted only on primary.sock (a Unix socket: its address is a path)
            if (
                client is not None
                and transport is not None
                and isinstance(transport.get_extra_info("sockname"), str)
            ):
                request = request.clone(remote=client)
            return await handler(request)

        return forwarded_client

    def _barrier(self) -> Any:
        @web.middleware
        async def replica_barrier(request: web.Request, handler: Handler) -> web.StreamResponse:
            path = request.path
            if path == "/admin/v1/usage":
                await self.flush_usage()  # the replicas' pending rows first
            response = await handler(request)
            if request.method not in _READS and (path.startswith("/admin/") or path in _MANAGEMENT):
                await self.sync(reload_keys=path.startswith("/admin/v1/keys"))
            return response

        return replica_barrier

    # -- snapshots -------------------------------------------------------------------------------------
    def _published(self, table: RoutingTable) -> None:
        ids = _instance_ids(table)
        gone, self._ids = self._ids - ids, ids
        if gone:
            for replica in self._replicas:
                for instance in gone:
                    self._agent.acquire(instance)
                replica.unfenced.extend(gone)
        if self._replicas:
            if self._push is None or self._push.done():
                self._push = asyncio.get_running_loop().create_task(self._push_all())
            else:
                self._push_again = True

    async def _push_all(self) -> None:
        self._push_again = True
        while self._push_again:
            self._push_again = False
            await asyncio.gather(*(self._send_state(r) for r in list(self._replicas)), return_exceptions=True)

    async def _send_state(self, replica: _Replica, *, reload_keys: bool = False) -> int:
        async with replica.lock:
            table = self._holder.table
            replica.seq += 1
            message: dict[str, Any] = {"op": "state", "seq": replica.seq}
            credentials = self._credentials
            sent_credentials = credentials.version
            if sent_credentials != replica.sent_credentials:
                message["credentials"] = credentials.to_json()  # applied before the table
            if table.generation != replica.sent_generation:
                message["table"] = table_json(table)
            if reload_keys:
                message["keys"] = True
            if replica.unfenced:
                replica.fences.append((replica.seq, replica.unfenced))
                replica.unfenced = []
            await replica.ws.send_bytes(orjson.dumps(message))
            replica.sent_generation = table.generation
            replica.sent_credentials = sent_credentials
            return replica.seq

    async def _keys_changed(self) -> None:
        await self.sync(reload_keys=True)

    async def sync(self, *, reload_keys: bool = False) -> None:
        """Every connected replica has the current snapshot (and reloaded its keys): bounded wait."""

        async def one(replica: _Replica) -> None:
            seq = await self._send_state(replica, reload_keys=reload_keys)
            if replica.acked >= seq:
                return
            waiter = asyncio.get_running_loop().create_future()
            replica.acks.append((seq, waiter))
            try:
                await asyncio.wait_for(waiter, SYNC_TIMEOUT)
            except TimeoutError:
                log.warning(
                    "worker %d did not confirm the new state within %.0f s", replica.index, SYNC_TIMEOUT
                )

        await asyncio.gather(*(one(r) for r in list(self._replicas)), return_exceptions=True)

    # -- the watch channel -----------------------------------------------------------------------------
    async def _watch(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        try:
            hello = orjson.loads((await ws.receive(timeout=30)).data)
        except (TypeError, ValueError, orjson.JSONDecodeError, TimeoutError):
            await ws.close()
            return ws
        replica = _Replica(int(hello["worker"]), int(hello.get("pid", 0)), ws, ActivityLedger(self._agent))
        self._replicas.add(replica)
        log.info("worker %d (pid %d) connected", replica.index, replica.pid)
        try:
            self._activity(replica, hello)
            await self._send_state(replica)
            async for message in ws:
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                self._received(replica, orjson.loads(message.data))
        finally:
            self._replicas.discard(replica)
            self._gone(replica)
        return ws

    def _received(self, replica: _Replica, data: dict[str, Any]) -> None:
        op = data.get("op")
        if op in ("activity", "ack"):
            self._activity(replica, data)
        if op == "ack":
            seq = int(data["seq"])
            replica.acked = max(replica.acked, seq)
            done = [f for f in replica.fences if f[0] <= seq]
            replica.fences = [f for f in replica.fences if f[0] > seq]
            for _, ids in done:
                for instance in ids:
                    self._agent.release(instance)
            waiting = [w for w in replica.acks if w[0] <= seq]
            replica.acks = [w for w in replica.acks if w[0] > seq]
            for _, waiter in waiting:
                if not waiter.done():
                    waiter.set_result(None)
        elif op == "reply":
            future = replica.replies.pop(int(data["seq"]), None)
            if future is not None and not future.done():
                future.set_result(data)

    def _activity(self, replica: _Replica, data: dict[str, Any]) -> None:
        """Fold a replica's report into the agent's counts (``workers.activity``)."""
        replica.ledger.fold(data)
        self._holds.reported(data)

    def _gone(self, replica: _Replica) -> None:
        log.info("worker %d (pid %d) disconnected", replica.index, replica.pid)
        replica.ledger.clear()
        for _, ids in replica.fences:
            for instance in ids:
                self._agent.release(instance)
        for instance in replica.unfenced:
            self._agent.release(instance)
        replica.fences, replica.unfenced = [], []
        self._holds.drop(replica)
        for _, waiter in replica.acks:
            if not waiter.done():
                waiter.set_result(None)
        for future in replica.replies.values():
            if not future.done():
                future.set_exception(ConnectionError(f"worker {replica.index} went away"))

    async def _call(self, replica: _Replica, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        async with replica.lock:
            replica.seq += 1
            seq = replica.seq
            future = asyncio.get_running_loop().create_future()
            replica.replies[seq] = future
            await replica.ws.send_bytes(orjson.dumps({**message, "seq": seq}))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            replica.replies.pop(seq, None)

    async def _call_all(self, message: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        replicas = list(self._replicas)
        results = await asyncio.gather(
            *(self._call(r, message, timeout) for r in replicas), return_exceptions=True
        )
        out = []
        for replica, result in zip(replicas, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("worker %d did not answer %s: %r", replica.index, message.get("op"), result)
            else:
                out.append(result)
        return out

    # -- scale from zero and unload for the replicas -------------------------------------------------
    async def _ensure(self, request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        try:
            # the replica resolved the name for its caller (scope included): no principal here
            route = self._targets.route(None, str(body["model"]))
            if body.get("failed") is None:
                target = await self._targets.pick(route)
            else:
                failed, reached = str(body["failed"]), body.get("reached") is not False
                found = await self._targets.controller.replace(route, failed, reached=reached)
                if found is None:
                    return web.Response(body=b'{"target":null}', content_type="application/json")
                target = found
        except SuperOllamaError as exc:
            return web.Response(body=error_json(exc), status=exc.status, content_type="application/json")
        replica = self._replica(request.headers.get(WORKER_HEADER))
        hold = self._holds.add(replica, target.instance_id)  # until reported, gone, or a minute
        return web.Response(
            body=orjson.dumps({"target": target, "hold": hold}), content_type="application/json"
        )

    def _replica(self, index: str | None) -> _Replica | None:
        for replica in self._replicas:
            if str(replica.index) == index:
                return replica
        return None

    async def _unload(self, request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        unloaded = await self._agent.unload(str(body["version"]), reason=str(body.get("reason", "requested")))
        return web.Response(body=orjson.dumps({"unloaded": unloaded}), content_type="application/json")

    # -- whole-server views --------------------------------------------------------------------------
    async def metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``: every worker's series, summed."""
        metrics = self._telemetry.metrics
        if metrics is None:
            raise web.HTTPNotFound(text="metrics are off (SUPEROLLAMA_METRICS=false)")
        own = metrics.render()
        replies = await self._call_all({"op": "metrics"}, CALL_TIMEOUT)
        texts = [own, *(str(r.get("body", "")).encode() for r in replies)]
        return web.Response(body=merge_expositions(texts), headers={"Content-Type": _METRICS_TYPE})

    async def flush_usage(self) -> None:
        """Every replica writes its pending usage ledger rows now."""
        await self._call_all({"op": "flush"}, CALL_TIMEOUT)


def _instance_ids(table: RoutingTable) -> set[str]:
    return {t.instance_id for route in table.routes.values() for t in route.targets}
