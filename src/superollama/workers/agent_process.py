"""The node agent's own process in ``serve --workers N`` (and in every ``serve --cluster``, one worker
included): model processes are its children, not a gateway's.

The master starts it next to the workers and restarts it like them. It runs a ``LocalAgent`` (with
``serve --cluster``, the cluster's agent: this process is then the only Ray driver, and no gateway worker
imports Ray, so a lost Ray head never takes a gateway with it; Ray ends this process instead, and the
master starts it again) and serves it on ``agent.sock`` (in the
run directory, mode 0600) to the primary worker, whose ``workers.remote_agent.RemoteAgent`` is the other
side — the same ``NodeAgent`` seam the controller uses
in a plain ``serve``. Same style as the primary's ``control.sock`` (``workers.primary``):

- ``GET /agent/watch``: one WebSocket per client (the primary), for its whole life. Agent → client:
  ``state`` (every instance it runs: id, endpoint, pid, state, keep-alive) at connect and whenever that
  set changes, and ``event`` (each lifecycle event, for the client's metrics and incidents). Client →
  agent: ``activity`` (its in-flight counts, ``workers.activity``), folded into the agent's own, so idle
  unloading and drains see every gateway worker's requests; a client that goes gives them back.
- ``POST /agent/ensure`` ``{artifact, runtime, device}``: the ready instance (loading it, shared by
  concurrent callers, bounded: the agent's 503s come back as they are) and a hold on it (see
  ``workers.activity``).
- ``POST /agent/stop`` ``{version, reason, drain}``: drain then stop; ``{"cut": n | null}``.
- ``POST /agent/ended`` ``{instance, within}``: how an instance a request could not reach has ended.
- ``POST /agent/move`` ``{artifact, runtime, node, instance}``: move an instance to another node (a cluster
  agent only; 409 otherwise); the answer is the move's outcome.
- ``POST /agent/copy`` ``{artifact, node}``: a version's files into a node's own store (``pull --node``; a
  cluster agent only); without ``artifact``, only the check that the node can take them.

Lifetimes: a gateway worker's death (the primary's included) costs the model processes nothing; the
primary that restarts finds them in the first ``state``. The agent's own death costs them nothing
either: they are started with the master as their guardian (``runtimes.process``: they die with the
master, not with the agent), and the restarted agent re-adopts the healthy ones (llama.cpp and
transformers) and stops the rest (``LocalAgent``); a model it could not adopt is loaded again on the
next request. The data plane talks to the instances directly, so no request passes through this
process. On SIGTERM (the master stops it after every worker) it stops its instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from superollama.agent import CopiesVersions, LiveInstance, LocalAgent, MovesInstances
from superollama.agent.node import agent_config
from superollama.core import Artifact, EventRecord, Runtime
from superollama.core.placement import PlacementConstraint
from superollama.errors import Conflict, SuperOllamaError
from superollama.gateway.loop import run as run_loop
from superollama.plugins import load_plugins
from superollama.registry import Registry, open_registry
from superollama.settings import Settings
from superollama.telemetry import configure_logging as configure_telemetry_logging
from superollama.workers.activity import ActivityLedger, Holds
from superollama.workers.context import WorkerContext
from superollama.workers.primary import error_json

__all__ = ["CLIENT_PID", "AgentFactory", "AgentServer", "instance_json", "local_agent", "serve_agent"]

AgentFactory = Callable[[Settings, Registry, Mapping[str, Runtime], WorkerContext], LocalAgent]
"""Builds the agent process's agent: ``local_agent``, or (``serve --cluster``) the app's cluster agent,
which makes this process the only Ray driver: no gateway worker imports Ray."""

CLIENT_PID = "X-Superollama-Client-Pid"  # on the client's every request: whose holds an ensure takes

log = logging.getLogger("superollama.workers")


def instance_json(inst: LiveInstance, keep_alive: float) -> dict[str, Any]:
    """One instance on the wire; ``keep_alive``: seconds idle before it is unloaded (null: never)."""
    return {
        "instance_id": inst.id,
        "endpoint": inst.handle.endpoint,
        "version": inst.version,
        "runtime": inst.runtime,
        "device": inst.device,
        "pid": inst.pid,
        "state": str(inst.state),
        "node": getattr(inst.handle, "node", None),  # on a cluster: the node it runs on
        "started_at": inst.started_at.isoformat(),
        "load_seconds": inst.load_seconds,
        "keep_alive": keep_alive if keep_alive != float("inf") else None,
    }


@dataclass(eq=False)
class _Client:
    ws: web.WebSocketResponse
    ledger: ActivityLedger
    pid: str | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class AgentServer:
    """``agent``, served on the Unix socket ``path`` (see the module's docstring)."""

    def __init__(self, agent: LocalAgent, path: Path) -> None:
        self._agent = agent
        self._path = path
        self._clients: set[_Client] = set()
        self._holds = Holds(agent)
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        agent.subscribe(self._changed)
        agent.on_event(self._event)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/agent/watch", self._watch)
        app.router.add_post("/agent/ensure", self._ensure)
        app.router.add_post("/agent/stop", self._stop)
        app.router.add_post("/agent/scale", self._scale)
        app.router.add_post("/agent/ended", self._ended)
        app.router.add_post("/agent/move", self._move)
        app.router.add_post("/agent/copy", self._copy)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        await web.UnixSite(self._runner, str(self._path)).start()
        self._path.chmod(0o600)

    async def close(self) -> None:
        for client in list(self._clients):
            await client.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- pushes ----------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        agent = self._agent
        instances = [instance_json(i, agent.keep_alive(i)) for i in agent.instances()]
        cluster = getattr(agent, "cluster_address", None)  # the Ray head machines join (``admin/join.py``)
        token_file = getattr(agent, "ray_token_file", None)  # its Ray token's file (never the token)
        return {
            "op": "state",
            "instances": instances,
            "cluster_address": cluster,
            "ray_token_file": None if token_file is None else str(token_file),
        }

    def _changed(self) -> None:
        for client in list(self._clients):
            self._spawn(self._send(client, self._state()))

    def _event(self, event: EventRecord) -> None:
        message = {
            "op": "event",
            "action": event.action,
            "target": event.target,
            "result": event.result,
            "detail": event.detail,
        }
        for client in list(self._clients):
            self._spawn(self._send(client, message))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, client: _Client, message: dict[str, Any]) -> None:
        async with client.lock:  # in order: a state is never overtaken by an older one
            with contextlib.suppress(ConnectionError, RuntimeError):
                await client.ws.send_bytes(orjson.dumps(message, default=str))

    # -- the watch channel -----------------------------------------------------------------------------
    async def _watch(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        client = _Client(ws, ActivityLedger(self._agent), request.headers.get(CLIENT_PID))
        self._clients.add(client)
        log.info("agent: a gateway worker connected")
        try:
            await self._send(client, self._state())
            async for message in ws:
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                data = orjson.loads(message.data)
                client.ledger.fold(data)
                self._holds.reported(data)
        finally:
            self._clients.discard(client)
            client.ledger.clear()
            self._holds.drop(client)
            log.info("agent: a gateway worker disconnected")
        return ws

    def _client(self, request: web.Request) -> _Client | None:
        pid = request.headers.get(CLIENT_PID)
        return next((c for c in self._clients if pid is not None and c.pid == pid), None)

    # -- calls -----------------------------------------------------------------------------------------
    async def _ensure(self, request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        replicas = body.get("replicas")
        try:
            inst = await self._agent.ensure(
                _artifact(body["artifact"]),
                str(body["runtime"]),
                device=str(body.get("device") or "cpu"),
                replicas=None if replicas is None else int(replicas),
                placement=_placement(body),
            )
        except SuperOllamaError as exc:
            return web.Response(body=error_json(exc), status=exc.status, content_type="application/json")
        hold = self._holds.add(self._client(request), inst.id)  # same turn as ensure handed it over
        answer = {"instance": instance_json(inst, self._agent.keep_alive(inst)), "hold": hold}
        return web.Response(body=orjson.dumps(answer, default=str), content_type="application/json")

    async def _scale(self, request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        try:
            ready = await self._agent.scale(
                _artifact(body["artifact"]),
                str(body["runtime"]),
                int(body["replicas"]),
                device=str(body.get("device") or "cpu"),
                start=bool(body.get("start", True)),
                placement=_placement(body),
            )
        except SuperOllamaError as exc:
            return web.Response(body=error_json(exc), status=exc.status, content_type="application/json")
        answer = {"instances": [instance_json(i, self._agent.keep_alive(i)) for i in ready]}
        return web.Response(body=orjson.dumps(answer, default=str), content_type="application/json")

    async def _stop(self, request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        drain = body.get("drain")
        instance = body.get("instance")
        cut = await self._agent.stop_version(
            str(body["version"]),
            reason=str(body.get("reason") or "requested"),
            drain=None if drain is None else float(drain),
            instance=None if instance is None else str(instance),
        )
        return web.Response(body=orjson.dumps({"cut": cut}), content_type="application/json")

    async def _ended(self, request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        ending = await self._agent.ended(str(body["instance"]), within=float(body.get("within", 2.0)))
        return web.Response(body=orjson.dumps({"ending": ending}), content_type="application/json")

    async def _move(self, request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        agent = self._agent
        try:
            if not isinstance(agent, MovesInstances):
                raise Conflict(
                    "moving an instance to another node needs a cluster (serve --cluster)", param="node"
                )
            instance = body.get("instance")
            moved = await agent.move_instance(
                _artifact(body["artifact"]),
                str(body["runtime"]),
                str(body["node"]),
                instance=None if instance is None else str(instance),
            )
        except SuperOllamaError as exc:
            return web.Response(body=error_json(exc), status=exc.status, content_type="application/json")
        return web.Response(body=orjson.dumps(moved, default=str), content_type="application/json")

    async def _copy(self, request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        agent = self._agent
        try:
            if not isinstance(agent, CopiesVersions):
                raise Conflict("copying a version to a node needs a cluster (serve --cluster)", param="node")
            if body.get("artifact") is None:  # only the check
                await agent.check_copy_node(str(body["node"]))
                return web.Response(body=b"{}", content_type="application/json")
            copied = await agent.copy_to_node(_artifact(body["artifact"]), str(body["node"]))
        except SuperOllamaError as exc:
            return web.Response(body=error_json(exc), status=exc.status, content_type="application/json")
        return web.Response(body=orjson.dumps(copied, default=str), content_type="application/json")


def _artifact(data: dict[str, Any]) -> Artifact:
    return Artifact(
        name=str(data["name"]),
        format=str(data["format"]),
        path=Path(data["path"]),
        metadata=data.get("metadata") or {},
        projector=Path(data["projector"]) if data.get("projector") else None,
    )


def local_agent(
    settings: Settings, registry: Registry, runtimes: Mapping[str, Runtime], ctx: WorkerContext
) -> LocalAgent:
    """The agent of one machine: its model processes are guarded by the master, not by this process."""
    for runtime in runtimes.values():
        if hasattr(runtime, "guardian_pid"):  # its instances outlive this process and die with the master
            runtime.guardian_pid = ctx.master_pid
    return LocalAgent(registry, runtimes, agent_config(settings))


async def _serve(settings: Settings, ctx: WorkerContext, make_agent: AgentFactory) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = await open_registry(settings.registry_url)
    runtimes = load_plugins().runtimes(settings)  # the same runtimes, in the same order, as a plain serve
    agent = make_agent(settings, registry, runtimes, ctx)
    server = AgentServer(agent, ctx.paths.agent)
    try:
        await agent.start()  # re-adopts or stops what an earlier agent process left
        await server.start()
        ctx.notify_ready()
        await stop.wait()
        log.info("agent process shutting down")
    finally:
        await server.close()
        await agent.close()
        await registry.close()


def serve_agent(settings: Settings, ctx: WorkerContext, *, agent: AgentFactory = local_agent) -> None:
    """The agent process's main (in the forked process); ``partial(serve_agent, agent=…)`` chooses its
    agent."""
    logging_handle = configure_telemetry_logging(settings)
    try:
        run_loop(_serve(settings, ctx, agent))
    finally:
        logging_handle.close()


def _placement(body: dict[str, Any]) -> PlacementConstraint | None:
    """The call's placement constraint (absent: as before; ``{}``: none)."""
    raw = body.get("placement")
    return None if raw is None else PlacementConstraint.from_json(raw)
