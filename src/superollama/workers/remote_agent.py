"""The primary worker's ``NodeAgent``: the agent process (``workers.agent_process``) over ``agent.sock``.

It mirrors the agent's instances from its ``state`` pushes as ``LiveInstance`` values whose handle
knows only the pid and endpoint (``RemoteHandle``), so the controller, the swapper and the admin views
read them as they read a local agent's. Request accounting stays local (``workers.activity``) and is
reported on the watch channel, replicas' counts included (the primary hub folds them in here).

The watch is re-opened (0.1 s doubling to 0.5 s) while the agent process restarts; the mirror is kept
meanwhile (the restarted agent's first ``state`` says what still runs). ``ensure`` waits, within the load
timeout, for the agent to be reachable, so requests during an agent restart wait instead of failing;
``ended`` of an instance whose process is gone with the agent that ran it says ``crashed`` (the kernel
knows; a restarted agent does not), which sends a request that never got an answer to a replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from superollama.agent import Ending, Inventory, LiveInstance
from superollama.agent.choice import RuntimeChoice
from superollama.core import Artifact, Endpoint, EventRecord, InstanceState, Runtime
from superollama.core.placement import PlacementConstraint
from superollama.core.waits import wait_set
from superollama.errors import LoadTimeout, Unavailable
from superollama.runtimes.process import is_our_process
from superollama.workers.activity import ActivityReporter
from superollama.workers.agent_process import CLIENT_PID
from superollama.workers.link import post_json
from superollama.workers.snapshot import decode_target

__all__ = ["RemoteAgent", "RemoteHandle"]

log = logging.getLogger("superollama.workers")

_BASE = "http://agent"
_RECONNECT_FIRST = 0.1
_RECONNECT_MAX = 0.5
_CALL_TIMEOUT = 30.0
_PEER = "the node agent"
_ENDED_KEPT = 256  # ids of ended instances remembered, so a late state message cannot revive one


class RemoteHandle:
    """``InstanceHandle`` of an instance the agent process runs: identity only; it ends when the agent
    says so (``wait``). Stopping goes through the agent (``RemoteAgent.stop_version``)."""

    def __init__(self, instance_id: str, pid: int, endpoint: Endpoint, node: str | None = None) -> None:
        self.instance_id = instance_id
        self.pid = pid
        self.endpoint = endpoint
        self.node = node  # on a cluster: the node it runs on (its pid is that machine's); None: this one
        self._gone = asyncio.Event()

    def alive(self) -> bool:
        return not self._gone.is_set()

    async def wait(self) -> int:
        await self._gone.wait()
        return 0

    async def stop(self, timeout: float) -> None:
        raise RuntimeError("an agent process's instance stops through the agent")

    def gone(self) -> None:
        self._gone.set()


class RemoteAgent:
    """``NodeAgent`` over the agent process's Unix socket ``path`` (see the module's docstring)."""

    def __init__(
        self,
        path: Path,
        runtimes: dict[str, Runtime],
        *,
        node: str,
        load_timeout: float,
        first_state_timeout: float = 30.0,
    ) -> None:
        """``runtimes``: the plugins' runtimes, as the agent process has them: which one serves a version is
        chosen here, on the same node's inventory, without a round trip (the agent process starts it)."""
        self._inventory = Inventory()
        self._choice = RuntimeChoice(runtimes, node)
        self._load_timeout = load_timeout
        self._first_state_timeout = first_state_timeout
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(path), limit=0), headers={CLIENT_PID: str(os.getpid())}
        )
        self._live: dict[str, LiveInstance] = {}  # by instance id (a version's replicas: several)
        self._by_id = self._live
        self._replicas: dict[str, int] = {}  # by version: the instances wanted, as last asked
        self._ended: OrderedDict[str, None] = OrderedDict()  # ids the agent said have ended (bounded)
        self._keep: dict[str, float] = {}  # by instance: seconds idle before the agent unloads it
        self._last_used: dict[str, float] = {}
        self._ensuring: dict[str, int] = {}
        self._activity = ActivityReporter()
        self._connected = asyncio.Event()
        self._first_state = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._event_listeners: list[Callable[[EventRecord], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._cluster_address: str | None = None
        self._ray_token_file: str | None = None

    @property
    def cluster_address(self) -> str | None:
        """The Ray head other machines join, when the agent process runs a cluster (``serve --cluster``)."""
        return self._cluster_address

    @property
    def ray_token(self) -> str | None:
        """Ray's token of the head the agent process started, read from its file (same machine)."""
        if self._ray_token_file is None:
            return None
        return Path(self._ray_token_file).read_text().strip()

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, and wait (bounded) for the agent's first ``state``: the instances that already run."""
        self._tasks = [
            asyncio.create_task(self._watch(), name="agent-watch"),
            asyncio.create_task(self._activity.run(self._send), name="agent-report"),
        ]
        if not await wait_set(self._first_state, self._first_state_timeout):
            log.warning("the node agent process has not answered yet; its instances appear once it does")

    async def close(self) -> None:
        """Disconnect; the instances go on running in the agent process."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        await self._session.close()

    def on_event(self, listener: Callable[[EventRecord], None]) -> None:
        self._event_listeners.append(listener)

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    # -- observed state --------------------------------------------------------------------------------
    def instances(self) -> list[LiveInstance]:
        return sorted(self._live.values(), key=lambda i: i.version)

    def instances_of(self, version: str) -> list[LiveInstance]:
        return [i for i in self._live.values() if i.version == version]

    def instance_for(self, version: str) -> LiveInstance | None:
        of = self.instances_of(version)
        ready = [i for i in of if i.state is InstanceState.READY]
        if ready:
            return min(ready, key=lambda i: self._activity.in_flight(i.id))
        return of[0] if of else None

    def replicas(self, version: str) -> int:
        return self._replicas.get(version, 1)

    def loading(self, version: str) -> bool:
        return self._ensuring.get(version, 0) > 0

    # -- request accounting (hot path: no I/O) ---------------------------------------------------------
    def in_flight(self, instance_id: str) -> int:
        return self._activity.in_flight(instance_id)

    def acquire(self, instance_id: str) -> None:
        self._activity.acquire(instance_id)
        self._touch(instance_id)

    def release(self, instance_id: str) -> None:
        self._activity.release(instance_id)
        self._touch(instance_id)

    def _touch(self, instance_id: str) -> None:
        self._last_used[instance_id] = time.monotonic()
        inst = self._by_id.get(instance_id)
        if inst is not None:
            inst.in_flight = self._activity.in_flight(instance_id)

    def set_keep_alive(self, version: str, seconds: float | None) -> None:
        self._activity.set_keep_alive(version, seconds)
        for inst in self.instances_of(version):
            if seconds is not None:
                self._keep[inst.id] = seconds

    def expires_in(self, version: str) -> float | None:
        of = self.instances_of(version)
        if not of:
            return None
        now = time.monotonic()
        return max(self._last_used.get(i.id, now) + self._keep.get(i.id, float("inf")) for i in of) - now

    # -- calls -----------------------------------------------------------------------------------------
    async def runtime_for(self, artifact: Artifact) -> str:
        """The runtime that serves ``artifact`` on this node (``agent/choice.py``)."""
        if self._choice.inventory is None:
            self._choice.inventory = await asyncio.to_thread(self._inventory.capacity)
        return await self._choice.runtime_for(artifact)

    async def usage(self) -> dict[str, object]:
        """This node's CPU, RAM and GPU use now (the agent process runs on this same node)."""
        return await asyncio.to_thread(self._inventory.usage)

    async def ensure(
        self,
        artifact: Artifact,
        runtime: str,
        *,
        device: str = "cpu",
        replicas: int | None = None,
        placement: PlacementConstraint | None = None,
    ) -> LiveInstance:
        if replicas is not None:
            self._replicas[artifact.name] = replicas
        live = self.instance_for(artifact.name)
        if live is not None and live.state is InstanceState.READY:
            return live
        self._ensuring[artifact.name] = self._ensuring.get(artifact.name, 0) + 1
        try:
            return await self._ensure(artifact, runtime, device, replicas, placement)
        finally:
            self._ensuring[artifact.name] -= 1
            if not self._ensuring[artifact.name]:
                del self._ensuring[artifact.name]

    async def _ensure(
        self,
        artifact: Artifact,
        runtime: str,
        device: str,
        replicas: int | None,
        placement: PlacementConstraint | None,
    ) -> LiveInstance:
        deadline = asyncio.get_running_loop().time() + self._load_timeout
        await self._reachable(deadline, f"model {artifact.name!r}")
        body = {
            "artifact": _artifact_json(artifact),
            "runtime": runtime,
            "device": device,
            "replicas": replicas,
            "placement": None if placement is None else placement.as_json(),
        }
        left = max(1.0, deadline - asyncio.get_running_loop().time())
        data = await post_json(self._session, _BASE + "/agent/ensure", body, left + 15, peer=_PEER)
        inst = self._mirror(data["instance"])
        self._activity.hold(int(data["hold"]))
        return inst

    async def scale(
        self,
        artifact: Artifact,
        runtime: str,
        replicas: int,
        *,
        device: str = "cpu",
        start: bool = True,
        placement: PlacementConstraint | None = None,
    ) -> list[LiveInstance]:
        self._replicas[artifact.name] = replicas
        deadline = asyncio.get_running_loop().time() + self._load_timeout
        await self._reachable(deadline, f"model {artifact.name!r}")
        body = {
            "artifact": _artifact_json(artifact),
            "runtime": runtime,
            "device": device,
            "replicas": replicas,
            "start": start,
            "placement": None if placement is None else placement.as_json(),
        }
        await self._send({"op": "activity"})  # a drain of the surplus sees our counts first
        timeout = self._load_timeout + _CALL_TIMEOUT + 3600.0
        data = await post_json(self._session, _BASE + "/agent/scale", body, timeout, peer=_PEER)
        return [self._mirror(i) for i in data["instances"]]

    async def move_instance(
        self, artifact: Artifact, runtime: str, node: str, *, instance: str | None = None
    ) -> dict[str, Any]:
        """``MovesInstances`` through the agent process (a cluster agent moves; another answers 409)."""
        deadline = asyncio.get_running_loop().time() + self._load_timeout
        await self._reachable(deadline, f"model {artifact.name!r}")
        body = {"artifact": _artifact_json(artifact), "runtime": runtime, "node": node, "instance": instance}
        await self._send({"op": "activity"})  # the old instance's drain sees our counts first
        timeout = self._load_timeout + _CALL_TIMEOUT + 3600.0
        return dict(await post_json(self._session, _BASE + "/agent/move", body, timeout, peer=_PEER))

    @property
    def several_nodes(self) -> bool:
        """``CopiesVersions``: whether the agent process runs a cluster (known from its first state)."""
        return self._cluster_address is not None

    async def check_copy_node(self, node: str) -> None:
        await post_json(self._session, _BASE + "/agent/copy", {"node": node}, _CALL_TIMEOUT, peer=_PEER)

    async def copy_to_node(self, artifact: Artifact, node: str) -> dict[str, Any]:
        body = {"artifact": _artifact_json(artifact), "node": node}
        timeout = self._load_timeout + _CALL_TIMEOUT + 3600.0  # a copy of many GiB between machines
        return dict(await post_json(self._session, _BASE + "/agent/copy", body, timeout, peer=_PEER))

    async def _reachable(self, deadline: float, what: str) -> None:
        left = deadline - asyncio.get_running_loop().time()
        if not await wait_set(self._connected, max(0.0, left)):
            raise LoadTimeout(f"{what}: the node agent process is still restarting", retry_after=5)

    async def unload(self, version: str, *, reason: str = "requested", drain: float | None = None) -> bool:
        return await self.stop_version(version, reason=reason, drain=drain) is not None

    async def stop_version(
        self, version: str, *, reason: str, drain: float | None = None, instance: str | None = None
    ) -> int | None:
        stopping = [
            i
            for i in self.instances_of(version)
            if i.state is InstanceState.READY and (instance is None or i.id == instance)
        ]
        for inst in stopping:
            inst.state = InstanceState.DRAINING  # out of this process's routing at once
        if stopping:
            self._changed()
        await self._send({"op": "activity"})  # the drain sees our counts (fences included) first
        body = {"version": version, "reason": reason, "drain": drain, "instance": instance}
        timeout = _CALL_TIMEOUT + (drain if drain is not None and drain != float("inf") else 3600.0)
        data = await post_json(self._session, _BASE + "/agent/stop", body, timeout, peer=_PEER)
        cut = data.get("cut")
        return None if cut is None else int(cut)

    async def ended(self, instance_id: str, *, within: float = 2.0) -> Ending:
        inst = self._by_id.get(instance_id)
        body = {"instance": instance_id, "within": within}
        try:
            data = await post_json(self._session, _BASE + "/agent/ended", body, within + 5, peer=_PEER)
        except (Unavailable, LoadTimeout):  # the agent is restarting: ask the kernel instead
            deadline = time.monotonic() + within
            while True:  # a process killed with its agent is gone within milliseconds
                ending = self._exited(inst)
                if ending is not None or time.monotonic() >= deadline:
                    return ending or "running"
                await asyncio.sleep(0.05)
        ending = data.get("ending")
        if ending == "running":
            return "running"
        if ending == "stopped":  # or unknown to a restarted agent: it may have died with the last one
            ending = self._exited(inst) or "stopped"
        elif ending != "crashed":
            ending = "stopped"
        self._gone_now(inst)
        return ending

    def _gone_now(self, inst: LiveInstance | None) -> None:
        """The agent says ``inst`` has ended: out of the mirror now, not when the watch channel says so,
        since the request that asked goes straight on to ``ensure`` (which must not hand it back); a state
        message sent before the end cannot bring it back either."""
        if inst is None:
            return
        self._ended[inst.id] = None
        while len(self._ended) > _ENDED_KEPT:
            self._ended.popitem(last=False)
        if self._by_id.get(inst.id) is inst:
            self._forget(inst)
            self._changed()

    def _exited(self, inst: LiveInstance | None) -> Ending | None:
        """``crashed`` when the process of an instance still in the mirror is gone (it died with the agent
        process that ran it): out of the mirror at once, so the next ``ensure`` loads it again. An instance
        on a cluster node is not this machine's to judge: the agent (Ray) says how it ended."""
        elsewhere = inst is not None and getattr(inst.handle, "node", None) is not None
        if inst is None or elsewhere or is_our_process(inst.pid, inst.id):
            return None
        self._forget(inst)
        self._changed()
        return "crashed"

    # -- the watch channel -----------------------------------------------------------------------------
    async def _watch(self) -> None:
        delay = _RECONNECT_FIRST
        while True:
            connected = False
            try:
                async with self._session.ws_connect(_BASE + "/agent/watch", max_msg_size=0) as ws:
                    self._ws, connected = ws, True
                    self._connected.set()
                    delay = _RECONNECT_FIRST
                    await self._send({"op": "activity"})
                    async for message in ws:
                        if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            break
                        self._received(orjson.loads(message.data))
            except (aiohttp.ClientError, OSError, ConnectionError) as exc:
                log.debug("agent watch: %r", exc)
            finally:
                self._ws = None
                self._connected.clear()
            if connected:
                log.warning("lost the node agent process; reconnecting")
            await asyncio.sleep(delay)
            delay = min(_RECONNECT_MAX, delay * 2)

    def _received(self, data: dict[str, Any]) -> None:
        op = data.get("op")
        if op == "state":
            self._cluster_address = data.get("cluster_address")
            self._ray_token_file = data.get("ray_token_file")
            self._apply(data.get("instances") or [])
            self._first_state.set()
        elif op == "event":
            event = EventRecord(
                action=str(data.get("action")),
                target=str(data.get("target")),
                result=str(data.get("result") or "ok"),
                actor="agent",
                detail=data.get("detail") or {},
            )
            for listener in self._event_listeners:
                try:
                    listener(event)
                except Exception:
                    log.exception("event listener failed on %s", event.action)

    def _apply(self, instances: list[dict[str, Any]]) -> None:
        ended = self._ended
        seen = {self._mirror(i, notify=False).id for i in instances if i.get("instance_id") not in ended}
        for inst in list(self._by_id.values()):
            if inst.id not in seen:
                self._forget(inst)
        self._changed()

    def _mirror(self, data: dict[str, Any], *, notify: bool = True) -> LiveInstance:
        """The mirror of one instance the agent reported (created or updated)."""
        target = decode_target(data)
        keep = data.get("keep_alive")
        self._keep[target.instance_id] = float("inf") if keep is None else float(keep)
        state = InstanceState(str(data.get("state") or "ready"))
        inst = self._by_id.get(target.instance_id)
        if inst is None:
            started = data.get("started_at")
            inst = LiveInstance(
                id=target.instance_id,
                version=str(data["version"]),
                runtime=str(data.get("runtime") or ""),
                device=str(data.get("device") or "cpu"),
                handle=RemoteHandle(
                    target.instance_id, int(data.get("pid") or 0), target.endpoint, data.get("node")
                ),
                started_at=datetime.fromisoformat(started) if started else datetime.now(UTC),
                load_seconds=float(data.get("load_seconds") or 0.0),
                last_used=time.monotonic(),
                state=state,
            )
            self._live[inst.id] = inst
            self._last_used.setdefault(inst.id, time.monotonic())
            if notify:
                self._changed()
        elif inst.state is not state and inst.state is not InstanceState.DRAINING:
            inst.state = state
            if notify:
                self._changed()
        return inst

    def _forget(self, inst: LiveInstance) -> None:
        self._live.pop(inst.id, None)
        self._keep.pop(inst.id, None)
        self._last_used.pop(inst.id, None)
        inst.state = InstanceState.STOPPED
        handle = inst.handle
        if isinstance(handle, RemoteHandle):
            handle.gone()

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    async def _send(self, message: dict[str, Any]) -> None:
        """Send on the watch channel with this process's activity (dropped while disconnected: the next
        connection's first message carries the counts again)."""
        ws = self._ws
        if ws is None:
            return
        async with self._send_lock:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_bytes(orjson.dumps({**message, **self._activity.take()}))


def _artifact_json(artifact: Artifact) -> dict[str, Any]:
    return {
        "name": artifact.name,
        "format": artifact.format,
        "path": str(artifact.path),
        "metadata": dict(artifact.metadata),
        "projector": None if artifact.projector is None else str(artifact.projector),
    }
