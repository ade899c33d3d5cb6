"""``RayAgent``: the node agent seam (``agent.instance.NodeAgent``) over a Ray cluster.

It is ``LocalAgent`` — the same single-flight loads, request accounting, drains, idle unloads and crash
watch — with each runtime wrapped in ``RayRuntime``, whose ``start`` places the instance and runs it on
the chosen node instead of in this process:

1. **Nodes**: every alive Ray node that carries a ``so_node:NAME`` resource (``ray start --resources``;
   the test cluster's nodes) is node ``NAME``. One ``NodeActor`` per node (detached, named
   ``node:NAME:RAY_NODE_ID``, pinned: a node that Ray starts again, or a head restarted over its control
   store, gets a new one, never a handle a driver cached for the dead one) reports its RAM, GPUs'
   memory and runtimes installed; the registry's ``nodes`` row is refreshed with them (a cordon or drain
   set there is kept).
2. **Placement** (``agent/placement.py``) by the instance's memory estimate (``agent/estimate.py``) for
   the runtime's context and slots, against each device's free memory less the estimates of the loads
   in progress there.
3. **Start**: a detached ``InstanceActor`` named after the instance (``get_if_exists``: never two),
   pinned with ``NodeAffinitySchedulingStrategy(node_id, soft=False)``; its scheduling is bounded by
   ``place_timeout`` (Ray keeps an unsatisfiable request pending without an error) and its start by the
   runtime's ready timeout; on either failure the actor is killed. The endpoint it answers is the child's
   ``node_ip:port``: the gateway relays there directly.
4. **Blobs** (``cluster/blobs.py``): a node with a store of its own (``SUPEROLLAMA_NODE_STORE``) that
   lacks a version's blob files gets them first — its ``NodeActor`` pulls them in chunks from another
   node that has them or, last, from the control plane's origin actor, verified by sha256 before they are
   visible — and its instance runs from its own copies. One transfer per (node, blob) at a time here,
   and one per blob on the node. A folder version (``cluster/folders.py``) is copied file by file, each
   one a blob checked against the version's manifest, and its folder is built on the node in one rename
   once all are there (one copy per (node, folder) at a time); an adapter's base goes with it. A node
   without a store of its own reads the control plane's files.
5. **Observed memory** (``cluster/memory.py``): what the instance's process uses once loaded is kept per
   (version, device kind); later placements of that version need ``max(estimate, observed x 1.05)``.
   Each node's inventory lists its instances with both numbers (``memory``).
6. **Re-adoption**: a control plane that restarts finds each instance its registry says runs by its actor's
   name (``RayRuntime.adopt``) and keeps it; a named instance actor the registry does not know (a start
   cut short by the restart) is killed — no duplicates. ``close`` therefore stops nothing: the instances
   are detached and outlive this driver; ``unload`` / ``stop_version`` stop them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from superollama.agent import LocalAgent
from superollama.agent.choice import RuntimeChoice
from superollama.agent.estimate import MemoryEstimate, estimate
from superollama.agent.instance import AgentConfig, LiveInstance
from superollama.agent.placement import DeviceView, NodeView, Placement, Policy, place, request_for
from superollama.cluster.actors import InstanceActor, NodeActor
from superollama.cluster.copies import NodeCopies
from superollama.cluster.head import RayHead
from superollama.cluster.memory import ObservedMemory, observed_bytes
from superollama.core import (
    Artifact,
    Endpoint,
    InstanceHandle,
    InstanceRecord,
    InstanceSpec,
    InstanceState,
    NodeRecord,
    Runtime,
)
from superollama.core.placement import PlacementConstraint
from superollama.errors import ModelLoadFailed
from superollama.registry import Registry

__all__ = ["NODE_RESOURCE", "RayAgent", "RayHandle", "RayRuntime"]

log = logging.getLogger("superollama.cluster")

NODE_RESOURCE = "so_node:"  # a Ray node resource "so_node:NAME" names the node NAME
INSTANCE_PREFIX = "inst-"
_CALL_TIMEOUT = 10.0
_ACTIVE = (InstanceState.PENDING, InstanceState.LOADING, InstanceState.READY, InstanceState.DRAINING)


@dataclass(frozen=True)
class RayNode:
    name: str
    node_id: str
    address: str
    view: NodeView
    store_root: str | None = None  # its own blob store; None: it reads the control plane's files
    record: NodeRecord | None = None  # as last refreshed: placement builds its view again at place time
    report: Mapping[str, Any] | None = None


_UNAVAILABLE_FIRST_WAIT = 0.5  # seconds before asking an unreachable actor again (doubling)
_UNAVAILABLE_MAX_WAIT = 10.0


class RayHandle:
    """``InstanceHandle`` of an instance actor: the child's pid and endpoint, the node and device it
    runs on. ``wait`` ends when the child exits or the actor (or its node) dies."""

    def __init__(self, instance_id: str, actor: Any, info: Mapping[str, Any], node: str, device: str) -> None:
        self.instance_id = instance_id
        self.pid = int(info["pid"])
        self.endpoint = Endpoint(
            base_url=str(info["endpoint"]),
            provider=str(info["provider"]),
            served_name=str(info["served_name"]),
        )
        self.node = node
        self.device = device
        self.node_id = str(info.get("node_id") or "")
        self.observed: dict[str, Any] = dict(info.get("observed") or {})
        self.estimate: MemoryEstimate | None = None  # what placement fitted (None: re-adopted)
        self._actor = actor
        self._gone = False

    def alive(self) -> bool:
        return not self._gone

    async def wait(self) -> int:
        delay = _UNAVAILABLE_FIRST_WAIT
        while True:
            try:
                code = int(await self._actor.wait.remote())
                break
            except ray.exceptions.ActorUnavailableError as exc:
                # Ray's word for "not reachable now, maybe later" (a link to its node down, a head
                # restarting): the instance may well be serving still. Ask again; once the actor is
                # really gone, Ray says so with ActorDiedError.
                log.info(
                    "instance %s: its actor is unreachable for now (%s); asking again", self.instance_id, exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _UNAVAILABLE_MAX_WAIT)
            except ray.exceptions.RayError as exc:
                log.warning("instance %s: its actor is gone (%s)", self.instance_id, type(exc).__name__)
                code = -1
                break
        await _kill(self._actor)  # the instance is over: its actor goes too (never one left behind)
        self._gone = True
        return code

    async def stop(self, timeout: float) -> None:
        with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
            await asyncio.wait_for(_result(self._actor.stop.remote(timeout)), timeout + _CALL_TIMEOUT)
        await _kill(self._actor)
        self._gone = True


class RayRuntime:
    """A runtime whose instances run on cluster nodes (``ray_runtime`` gives each its inner's name)."""

    name: ClassVar[str] = ""
    provider: ClassVar[str] = ""

    def __init__(self, inner: Runtime, agent: RayAgent) -> None:
        self.inner = inner
        self._agent = agent

    def accepts(self, artifact: Artifact) -> bool:
        return self.inner.accepts(artifact)

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        return await self._agent.start_instance(self.inner, spec)

    async def adopt(self, record: InstanceRecord) -> InstanceHandle | None:
        return await self._agent.adopt_instance(record)


def ray_runtime(inner: Runtime, agent: RayAgent) -> Runtime:
    cls = type(f"Ray{type(inner).__name__}", (RayRuntime,), {"name": inner.name, "provider": inner.provider})
    runtime: Runtime = cls(inner, agent)
    return runtime


class RayAgent(LocalAgent):
    def __init__(
        self,
        registry: Registry,
        runtimes: Mapping[str, Runtime],
        config: AgentConfig,
        *,
        address: str,
        head: RayHead | None = None,
        namespace: str = "superollama",
        policy: Policy = "binpack",
        place_timeout: float = 30.0,
        ready_timeout: float = 120.0,
        node_refresh: float = 5.0,
        node_ip_address: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        wrapped = {name: ray_runtime(rt, self) for name, rt in runtimes.items()}
        super().__init__(registry, wrapped, config, clock=clock)
        self._choice = RuntimeChoice(dict(runtimes), config.node)  # the inner runtimes choose, as locally
        self._address = address
        self._head = head  # started here, stopped on close (``serve --cluster`` without an address)
        self._namespace = namespace
        self._policy = policy
        self._place_timeout = place_timeout
        self._ready_timeout = ready_timeout
        self._node_refresh = node_refresh
        self._reserved: dict[tuple[str, str], int] = {}  # (node, device) → bytes of loads in progress
        self._device_locks: dict[tuple[str, str], asyncio.Lock] = {}  # one vLLM start per GPU at a time
        self._placing: dict[str, int] = {}  # node → loads in progress there (``spread`` counts them)
        self._placing_of: dict[tuple[str, str], int] = {}  # (node, version) → its loads in progress there
        self._nodes: dict[str, RayNode] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._node_ip_address = node_ip_address  # this driver's address in the cluster (None: Ray's guess)
        self._instance_actor = ray.remote(InstanceActor)
        self._node_actor = ray.remote(NodeActor)
        self.observed = ObservedMemory()
        self.copies = NodeCopies(
            self._node_handle, self.nodes, self._node_actor, origin_node=self._own_node_id
        )

    @property
    def cluster_address(self) -> str:
        """The Ray head's control store (``host:port``) other machines join (``admin/join.py``)."""
        return self._address

    @property
    def ray_token_file(self) -> Path | None:
        """The file (0600) of Ray's token for the head this control plane started (None: none)."""
        return self._head.auth_token if self._head is not None else None

    @property
    def ray_token(self) -> str | None:
        """Ray's token for the head this control plane started (None: no token authentication), given
        to the machines that join (``admin/join.py``)."""
        path = self.ray_token_file
        return path.read_text().strip() if path is not None else None

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._head is not None:
            self._address = await self._head.start()
        await asyncio.to_thread(self._connect)
        self._choice.inventory = await asyncio.to_thread(self.inventory.capacity)
        await self.refresh_nodes()
        await self._own_node_up()
        await self._replace_leftovers()
        await self._kill_unknown_actors()
        self._reaper = asyncio.create_task(self._reap_idle(), name="agent-reaper")
        self._refresher = asyncio.create_task(self._refresh_loop(), name="cluster-nodes")

    async def _own_node_up(self) -> None:
        """A head of ours with a control store runs nothing (``cluster/head.py``): this machine's node is
        a Ray node started beside it. Wait for its report (the head's start timeout at most), so the
        first placements and re-adoptions see it."""
        if self._head is None or self._head.node is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._head.start_timeout
        while self._config.node not in self._nodes and loop.time() < deadline:
            await asyncio.sleep(0.5)
            await self.refresh_nodes()
        if self._config.node not in self._nodes:
            log.warning("this machine's Ray node %s has not joined the head yet", self._config.node)

    def _connect(self) -> None:
        """Join the cluster as its driver. With a head of ours that has a control store, the driver is
        a process of this machine's own Ray node (found by its Ray directory; Ray would otherwise pick
        the head on the same address): a driver on the head's node has its job marked finished when a
        head restart declares that node dead, and can then create no actor of its own (the origin)."""
        if ray.is_initialized():
            return
        own = self._head.node if self._head is not None else None
        deadline = time.monotonic() + (self._head.start_timeout * 3 if self._head is not None else 0)
        while True:
            try:
                ray.init(
                    address=self._address,
                    namespace=self._namespace,
                    log_to_driver=False,
                    configure_logging=False,
                    _node_ip_address=self._node_ip_address,
                    _temp_dir=str(own.ray_temp_dir) if own is not None else None,
                )
                return
            except RuntimeError as exc:  # Ray looks for the node a minute at a time
                if own is None or "No node info found" not in str(exc) or time.monotonic() > deadline:
                    raise
                log.warning("waiting for this machine's Ray node to join the head (see %s)", own.log_path)

    async def close(self) -> None:
        """Leave the cluster; the instances are detached and keep serving (a restarted control plane
        re-adopts them). In-progress loads are cancelled (their actors killed)."""
        self._closing = True
        for background in (self._reaper, self._refresher):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        for inst in list(self._live.values()):
            if inst._watcher is not None:
                inst._watcher.cancel()
        await asyncio.to_thread(ray.shutdown)
        if self._head is not None:
            await self._head.stop()

    async def _refuse_when_closed(self, version: str) -> None:
        """Nothing refused up front: the control plane's node is one node of the cluster, and a cordon of
        it keeps instances off it only. Placement filters every cordoned node, and its 503 names them."""

    @property
    def registry(self) -> Registry:
        return self._registry

    async def move_instance(
        self, artifact: Artifact, runtime: str, node: str, *, instance: str | None = None
    ) -> dict[str, Any]:
        """Move an instance of the version to ``node``, no request lost (``cluster/moves.py``)."""
        from superollama.cluster.moves import move_instance

        outcome = await move_instance(self, artifact, runtime, node, instance=instance)
        return outcome.as_json()

    @property
    def several_nodes(self) -> bool:
        return True

    async def check_copy_node(self, node: str) -> None:
        """``CopiesVersions``: the node a pull copies to is known and up (404, 409)."""
        from superollama.cluster.moves import check_node

        await check_node(self, node)

    async def copy_to_node(self, artifact: Artifact, node: str) -> dict[str, Any]:
        """``CopiesVersions``: the version's files in ``node``'s own store (copied now unless there
        already), as ``pull --node`` asks; a node that reads the control plane's files needs no copy."""
        await self.check_copy_node(node)
        t0 = time.perf_counter()
        target = self._nodes[node]
        placed = await self._place_blobs(target, artifact)
        return {
            "name": node,
            "path": str(placed.path),
            "own_store": target.store_root is not None,
            "seconds": round(time.perf_counter() - t0, 3),
        }

    # -- nodes -----------------------------------------------------------------------------------------
    def nodes(self) -> dict[str, RayNode]:
        """The cluster's nodes at the last refresh, by name."""
        return dict(self._nodes)

    async def refresh_nodes(self) -> dict[str, RayNode]:
        """Ask Ray which nodes live and each node's actor what it has; record them in the registry."""
        found: dict[str, RayNode] = {}
        known = {n.name: n for n in await self._registry.nodes.list()}
        by_id = {str(n.inventory.get("ray_node_id")): n.name for n in known.values()}
        for info in await asyncio.to_thread(ray.nodes):
            # a dead node's entry has no resources left: it is known by the Ray node id we recorded
            name = _node_name(info.get("Resources") or {}) or by_id.get(str(info.get("NodeID")))
            if name is None:
                continue
            if not info.get("Alive"):
                if name in known and name not in found and known[name].state not in ("down", "removed"):
                    await self._registry.nodes.upsert(_replace_state(known[name], "down"))
                continue
            node_id, address = str(info["NodeID"]), str(info.get("NodeManagerAddress") or "")
            try:
                report = await self._node_report(name, node_id)
            except (ray.exceptions.RayError, TimeoutError) as exc:
                log.warning("node %s did not report its inventory: %s", name, exc)
                continue
            prior = await self._registry.nodes.find(name)
            labels = dict((prior.inventory.get("labels") or {}) if prior is not None else {})
            store = report.get("store") or {}
            inventory = {
                **report["capacity"],
                "usage": report["usage"],
                "runtimes": report["runtimes"],
                "labels": labels,
                "ray_node_id": node_id,
                "ray_gpus": (info.get("Resources") or {}).get("GPU", 0),
                "store": store,
                "memory": self._memory_of(name),
            }
            # the state is left as it is (a cordon set while the reports ran stays), except that a node
            # new or back from down is ready
            record = None
            if prior is not None and (prior.closed or prior.state == "ready"):
                record = await self._registry.nodes.report(name, address, inventory)
            if record is None:
                record = await self._registry.nodes.upsert(NodeRecord(name, address, "ready", inventory))
            root = store.get("root")
            view = self._view(record, report)
            found[name] = RayNode(name, node_id, address, view, root or None, record, report)
        self._nodes = found
        return found

    async def _node_report(self, name: str, node_id: str) -> dict[str, Any]:
        actor = await self._node_handle(name, node_id)
        report: dict[str, Any] = await asyncio.wait_for(
            _result(actor.inventory.remote()), self._place_timeout
        )
        return report

    async def _node_handle(self, name: str, node_id: str) -> Any:
        return await asyncio.to_thread(
            lambda: self._node_actor.options(
                name=f"node:{name}:{node_id}",
                namespace=self._namespace,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            ).remote()
        )

    def _memory_of(self, node: str) -> list[dict[str, Any]]:
        """This node's instances: the estimate placement fitted beside the memory observed after load."""
        out = []
        for inst in self._live.values():
            handle = inst.handle
            if not isinstance(handle, RayHandle) or handle.node != node:
                continue
            out.append(
                {
                    "instance": handle.instance_id,
                    "version": inst.version,
                    "device": handle.device,
                    "estimate": handle.estimate.total if handle.estimate is not None else None,
                    "observed_rss": handle.observed.get("rss"),
                    "observed_gpu": handle.observed.get("gpu"),
                }
            )
        return out

    def _view(self, record: NodeRecord, report: Mapping[str, Any], version: str | None = None) -> NodeView:
        usage = report["usage"]
        devices = [DeviceView("cpu", int(usage["memory_total"]), int(usage["memory_available"]))]
        for gpu in usage.get("gpus") or []:
            total, used = int(gpu["memory_total"]), int(gpu["memory_used"])
            devices.append(DeviceView(str(gpu["device"]), total, total - used))
        devices = [
            DeviceView(d.name, d.total, d.free - self._reserved.get((record.name, d.name), 0))
            for d in devices
        ]
        ours = sum(1 for i in self._live.values() if getattr(i.handle, "node", None) == record.name)
        ours += self._placing.get(record.name, 0)
        of_version = 0
        if version is not None:
            of_version = sum(
                1
                for i in self._live.values()
                if i.version == version
                and getattr(i.handle, "node", None) == record.name
                and i.state is not InstanceState.DRAINING
            )
            of_version += self._placing_of.get((record.name, version), 0)
        return NodeView(
            name=record.name,
            devices=tuple(devices),
            runtimes=frozenset(report["runtimes"]),
            labels={str(k): str(v) for k, v in (record.inventory.get("labels") or {}).items()},
            cordoned=record.closed,
            instances=ours,
            version_instances=of_version,
        )

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._node_refresh)
            try:
                await self.refresh_nodes()
            except Exception:
                log.exception("refreshing the cluster's nodes failed")

    # -- instances -------------------------------------------------------------------------------------
    async def placement(self, runtime: Runtime, spec: InstanceSpec) -> Placement:
        """Where an instance of ``spec`` goes now (the nodes are asked again first). The views are built
        again after the refresh, so that the loads placed while it ran (replicas starting in parallel)
        count: ``start_instance`` reserves its choice without yielding in between."""
        nodes = await self.refresh_nodes()
        views = [
            self._view(n.record, n.report, spec.version)
            if n.record is not None and n.report is not None
            else n.view
            for n in nodes.values()
        ]
        estimates = {
            kind: self.observed.correct(spec.version, kind, self._estimate(runtime, spec.artifact, kind))
            for kind in ("cpu", "cuda")
        }
        request = request_for(
            spec.version, runtime.name, spec.options, device=spec.device, policy=self._policy
        )
        return place(views, request, estimates)

    async def _check_placement(self, version: str, runtime: str) -> None:
        """Nothing to check ahead here: each start is placed against the cluster's nodes."""

    def fitting(self, artifact: Artifact, wanted: int) -> int:
        """How many of ``wanted`` more instances of ``artifact`` the cluster's nodes hold (at their last
        refresh, less the loads in progress): the replicas of a version go to any node, so the control
        plane's own memory says nothing here. Placement checks each one again when it starts."""
        spec = self._specs.get(artifact.name)
        inner = getattr(self._runtimes.get(spec[1]) if spec else None, "inner", None)
        if inner is None:
            return super().fitting(artifact, wanted)
        room = 0
        for node in self._nodes.values():
            view = node.view
            if node.record is not None and node.report is not None:
                view = self._view(node.record, node.report)
            if view.cordoned or inner.name not in view.runtimes:
                continue
            for dev in view.devices:
                guess = self._estimate(inner, artifact, dev.kind)
                need = self.observed.correct(artifact.name, dev.kind, guess)
                room += max(0, dev.free // max(need.total, 1))
        return min(wanted, room)

    @staticmethod
    def _estimate(runtime: Runtime, artifact: Artifact, kind: str) -> MemoryEstimate:
        ctx, parallel = getattr(runtime, "ctx", None), int(getattr(runtime, "parallel", 1) or 1)
        per_seq = ctx // parallel if isinstance(ctx, int) and ctx > 0 else None  # llama.cpp splits n_ctx
        planner = getattr(runtime, "memory_plan", None)  # a runtime that sizes its own memory (vLLM)
        try:
            return estimate(
                artifact.metadata,
                artifact.format,
                device_kind=kind,
                n_ctx=per_seq,
                n_parallel=parallel,
                plan=planner(kind) if callable(planner) else None,
            )
        except ValueError:
            size = artifact.path.stat().st_size if artifact.path.is_file() else 0
            return MemoryEstimate(size, 0, 0, 0, basis="file size (no metadata to estimate from)")

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
        """``LocalAgent.scale``; then, when the version's placement changed, its instances that no longer
        meet it move (``cluster/replace.py``: the new one ready before the old one drains)."""
        before = self.placement_of(artifact.name)
        ready = await super().scale(
            artifact, runtime, replicas, device=device, start=start, placement=placement
        )
        if placement is not None and placement != before and ready:
            from superollama.cluster.replace import replace_misplaced

            if await replace_misplaced(self, artifact, runtime):
                ready = self._ready(artifact.name)
        return ready

    async def start_instance(self, runtime: Runtime, spec: InstanceSpec) -> InstanceHandle:
        chosen = await self.placement(runtime, spec)
        node = self._nodes[chosen.node]
        key = (chosen.node, chosen.device)
        self._reserved[key] = self._reserved.get(key, 0) + chosen.estimate.total
        self._placing[chosen.node] = self._placing.get(chosen.node, 0) + 1
        mine = (chosen.node, spec.version)
        self._placing_of[mine] = self._placing_of.get(mine, 0) + 1
        log.info(
            "placing %s (%s) on %s %s: needs %d MiB, %d MiB free",
            spec.instance_id,
            spec.version,
            chosen.node,
            chosen.device,
            chosen.estimate.total >> 20,
            chosen.free_before >> 20,
        )
        try:
            artifact = await self._place_blobs(node, spec.artifact)
            async with self._device_start(chosen):
                handle = await self._start_on(runtime, replace(spec, artifact=artifact), node, chosen.device)
        finally:
            self._reserved[key] -= chosen.estimate.total
            self._placing[chosen.node] -= 1
            self._placing_of[mine] -= 1
            if not self._placing_of[mine]:
                del self._placing_of[mine]
        handle.estimate = chosen.estimate
        kind = "cpu" if chosen.device == "cpu" else chosen.device.split(":", 1)[0]
        seen = observed_bytes(chosen.device, handle.observed)
        self.observed.record(spec.version, kind, seen, node=node.name, instance=spec.instance_id)
        log.info(
            "%s on %s %s: estimated %d MiB, observed %s MiB after load",
            spec.instance_id,
            node.name,
            chosen.device,
            chosen.estimate.total >> 20,
            "?" if seen is None else seen >> 20,
        )
        return handle

    def _device_start(self, chosen: Placement) -> contextlib.AbstractAsyncContextManager[object]:
        """One start at a time on a device for a runtime that takes a share of it (vLLM measures the
        free memory as it starts: two starts side by side would each count the other's as theirs)."""
        if not chosen.estimate.device_share:
            return contextlib.nullcontext()
        return self._device_locks.setdefault((chosen.node, chosen.device), asyncio.Lock())

    def _own_node_id(self) -> str | None:
        """The Ray node id of this machine when the head is ours: the head's own node, or with a control
        store the Ray node beside it (which a head restart leaves as it is)."""
        own = self._nodes.get(self._config.node) if self._head is not None else None
        return own.node_id if own is not None else None

    # -- blobs -----------------------------------------------------------------------------------------
    async def _place_blobs(self, node: RayNode, artifact: Artifact) -> Artifact:
        """The artifact as ``node`` sees it: its files copied into the node's own store first (when it
        has one, ``cluster/copies.py``), the paths pointing there."""
        return await self.copies.place(node, artifact)

    async def _start_on(self, runtime: Runtime, spec: InstanceSpec, node: RayNode, device: str) -> RayHandle:
        placed = InstanceSpec(
            instance_id=spec.instance_id,
            version=spec.version,
            artifact=spec.artifact,
            runtime=spec.runtime,
            device=device,
            options=spec.options,
        )
        actor = await asyncio.to_thread(
            lambda: self._instance_actor.options(
                name=spec.instance_id,
                namespace=self._namespace,
                lifetime="detached",
                get_if_exists=True,
                max_restarts=0,
                num_cpus=0,
                num_gpus=1 if device.startswith("cuda") else 0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node.node_id, soft=False),
            ).remote(runtime, placed)
        )
        try:
            await asyncio.wait_for(_result(actor.__ray_ready__.remote()), self._place_timeout)
        except (TimeoutError, ray.exceptions.RayError) as exc:
            await _kill(actor)
            raise ModelLoadFailed(
                f"{spec.instance_id}: Ray did not start its actor on node {node.name} within "
                f"{self._place_timeout:g} s ({type(exc).__name__})"
            ) from None
        try:
            info = await asyncio.wait_for(_result(actor.start.remote()), self._ready_timeout + _CALL_TIMEOUT)
        except BaseException as exc:
            await _kill(actor)
            if isinstance(exc, ModelLoadFailed | asyncio.CancelledError):
                raise
            cause = getattr(exc, "cause", None)
            reason = getattr(cause, "message", None) or str(cause or exc) or type(exc).__name__
            raise ModelLoadFailed(f"{spec.instance_id} on node {node.name}: {reason}") from None
        return RayHandle(spec.instance_id, actor, info, node.name, device)

    async def adopt_instance(self, record: InstanceRecord) -> InstanceHandle | None:
        """The instance actor named ``record.id``, if it still runs a healthy child; else None (and the
        actor, if any, is killed)."""
        try:
            actor = await asyncio.to_thread(ray.get_actor, record.id, namespace=self._namespace)
        except ValueError:
            return None
        try:
            info = await asyncio.wait_for(_result(actor.info.remote()), _CALL_TIMEOUT)
        except (TimeoutError, ray.exceptions.RayError):
            info = None
        if info is None:
            await _kill(actor)
            return None
        log.info("re-adopted %s (%s) on node %s by its actor's name", record.id, record.version, record.node)
        handle = RayHandle(record.id, actor, info, record.node, record.device or "cpu")
        kind = "cpu" if handle.device == "cpu" else handle.device.split(":", 1)[0]
        seen = observed_bytes(handle.device, handle.observed)
        self.observed.record(record.version, kind, seen, node=record.node, instance=record.id)
        return handle

    async def _leftover_records(self) -> list[InstanceRecord]:
        return await self._registry.instances.list(states=_ACTIVE)

    async def _kill_unknown_actors(self) -> None:
        """Instance actors no registry row runs (a start cut short by a restart): killed."""
        named = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
        for item in named:
            name, namespace = str(item["name"]), item.get("namespace")
            if namespace != self._namespace or not name.startswith(INSTANCE_PREFIX) or name in self._by_id:
                continue
            with contextlib.suppress(ValueError):
                actor = await asyncio.to_thread(ray.get_actor, name, namespace=self._namespace)
                log.warning("killing instance actor %s: no instance of the registry runs there", name)
                await _kill(actor)


def _node_name(resources: Mapping[str, Any]) -> str | None:
    for key in resources:
        if key.startswith(NODE_RESOURCE):
            return key[len(NODE_RESOURCE) :]
    return None


def _replace_state(record: NodeRecord, state: str) -> NodeRecord:
    return NodeRecord(
        name=record.name,
        address=record.address,
        state=state,
        inventory=record.inventory,
        last_seen=record.last_seen,
    )


async def _result(ref: Any) -> Any:
    return await ref


async def _kill(actor: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.to_thread(ray.kill, actor, no_restart=True)
