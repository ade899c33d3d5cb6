"""The node agent: runs backend instances for versions on this node and reports what it observes.

In a plain ``serve`` it lives in the server process; with ``serve --workers N`` in a process of its own
(``workers.agent_process``), which the primary worker drives through ``workers.remote_agent`` — the same
``NodeAgent`` seam (``agent.instance``) either way, so no gateway process owns a model process. It owns:
- ``replicas`` live instances per version (1 unless a deployment asks for more: ``ensure``/``scale`` say
  how many), each its own process, port and id; loaded on demand, single-flight (concurrent requests
  share the first load; the other replicas start alongside it, in parallel, and join when ready); a
  replica that crashes is replaced (when more than one is wanted), a surplus one drains and stops;
- per-instance load accounting (in-flight requests, last use) for balancing and idle unloading;
- crash detection (a watcher per process) and clean replacement of processes left by an earlier agent;
- drains: an instance stops once nothing is in flight there, bounded (``drain_timeout``); "in flight"
  includes the callers of ``ensure`` that were handed the instance but have not counted their request yet
  (they resume one loop turn after the load ends, after a drain waiting on that load would look);
- ``ended``: how an instance the data plane could not reach has ended (crashed, stopped, or running), so
  that a request it never reached can go to a replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from superollama.agent.choice import RuntimeChoice
from superollama.agent.estimate import MemoryEstimate, estimate
from superollama.agent.instance import AgentConfig, Ending, LiveInstance
from superollama.agent.inventory import Inventory
from superollama.agent.placement import DeviceView, NodeView, place, request_for
from superollama.core import (
    Artifact,
    EventRecord,
    InstanceHandle,
    InstanceRecord,
    InstanceSpec,
    InstanceState,
    NodeRecord,
    Runtime,
)
from superollama.core.placement import PlacementConstraint
from superollama.core.waits import wait_set
from superollama.errors import Conflict, LoadTimeout, ModelLoadFailed, Unavailable
from superollama.registry import Registry

__all__ = ["LocalAgent"]

log = logging.getLogger("superollama.agent")

_ACTIVE = (InstanceState.PENDING, InstanceState.LOADING, InstanceState.READY, InstanceState.DRAINING)
_ENDINGS_KEPT = 256  # how many ended instances ``ended`` remembers (requests reach it within seconds)
_MEMORY_SLACK = 256 * 1024 * 1024  # kept free when starting more replicas
MAX_REPLICAS = 16


class LocalAgent:
    def __init__(
        self,
        registry: Registry,
        runtimes: Mapping[str, Runtime],
        config: AgentConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        inventory: Inventory | None = None,
    ) -> None:
        self._registry = registry
        self._runtimes = dict(runtimes)
        self._config = config
        self._choice = RuntimeChoice(self._runtimes, config.node)
        self._clock = clock
        self.inventory = inventory or Inventory()
        self._live: dict[str, LiveInstance] = {}  # by instance id, oldest first
        self._by_id = self._live  # the same map (both names are read)
        self._loading: dict[str, asyncio.Task[LiveInstance]] = {}  # by version: the load ``ensure`` shares
        self._extra: dict[str, set[asyncio.Task[LiveInstance]]] = {}  # by version: the other replicas' loads
        self._replicas: dict[str, int] = {}  # by version: how many instances are wanted (1 if absent)
        self._placement: dict[str, PlacementConstraint] = {}  # by version: where its instances may run
        self._specs: dict[str, tuple[Artifact, str, str]] = {}  # by version: what its last load started
        self._starting: dict[str, set[object]] = {}  # by version: loads not yet in ``_live`` (or failed)
        self.available_memory: Callable[[], int] = _available_memory
        self._load_waiters: dict[str, int] = {}  # by version: callers waiting on the load in progress
        self._ended: OrderedDict[str, Ending] = OrderedDict()  # by instance id, the latest last
        self._waiting = 0
        self._reaper: asyncio.Task[None] | None = None
        self._closing = False
        self._listeners: list[Callable[[], None]] = []
        self._event_listeners: list[Callable[[EventRecord], None]] = []

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        capacity = await asyncio.to_thread(self.inventory.capacity)
        self._choice.inventory = capacity
        prior = await self._registry.nodes.find(self._config.node)
        state = prior.state if prior is not None and prior.closed else "ready"  # a cordon outlives a restart
        labels = (prior.inventory.get("labels") if prior is not None else None) or {}  # ``nodes label``'s
        await self._registry.nodes.upsert(
            NodeRecord(
                name=self._config.node,
                address="local",
                state=state,
                inventory={**capacity, "labels": labels},
            )
        )
        await self._replace_leftovers()
        self._reaper = asyncio.create_task(self._reap_idle(), name="agent-reaper")

    async def close(self) -> None:
        """Stop every instance (clean shutdown: no process outlives the server)."""
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        extra = [t for tasks in self._extra.values() for t in tasks]
        for task in [*self._loading.values(), *extra]:
            task.cancel()
        await asyncio.gather(*self._loading.values(), *extra, return_exceptions=True)
        await asyncio.gather(*(self._stop(inst, reason="shutdown") for inst in list(self._live.values())))

    async def usage(self) -> dict[str, object]:
        """This node's CPU, RAM and GPU use now (``Inventory.usage``, off the event loop)."""
        return await asyncio.to_thread(self.inventory.usage)

    def on_event(self, listener: Callable[[EventRecord], None]) -> None:
        """Call ``listener`` with every lifecycle event the agent records (metrics, incidents)."""
        self._event_listeners.append(listener)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the set of ready instances changes."""
        self._listeners.append(listener)

    # -- observed state --------------------------------------------------------------------------
    def instances(self) -> list[LiveInstance]:
        return sorted(self._live.values(), key=lambda i: i.version)

    def instances_of(self, version: str) -> list[LiveInstance]:
        """The version's instances (its replicas), oldest first."""
        return [i for i in self._live.values() if i.version == version]

    def instance_for(self, version: str) -> LiveInstance | None:
        """One instance of the version: a ready one (the least loaded) if any."""
        of = self.instances_of(version)
        ready = [i for i in of if i.state is InstanceState.READY]
        if ready:
            return min(ready, key=lambda i: i.in_flight + i.pending)
        return of[0] if of else None

    def replicas(self, version: str) -> int:
        """How many instances of the version are wanted when it runs."""
        return self._replicas.get(version, 1)

    def placement_of(self, version: str) -> PlacementConstraint:
        """Where the version's instances may run (every start of one honours it)."""
        return self._placement.get(version, PlacementConstraint())

    def _constrain(self, version: str, placement: PlacementConstraint | None) -> None:
        if placement is None:
            return
        if placement.empty:
            self._placement.pop(version, None)
        else:
            self._placement[version] = placement

    def loading(self, version: str) -> bool:
        return version in self._loading or bool(self._extra.get(version))

    def in_flight(self, instance_id: str) -> int:
        inst = self._by_id.get(instance_id)
        return inst.in_flight if inst is not None else 0

    # -- request accounting (hot path: plain attribute updates, no I/O) --------------------------
    def acquire(self, instance_id: str) -> None:
        inst = self._by_id.get(instance_id)
        if inst is not None:
            inst.in_flight += 1
            inst.last_used = self._clock()
            inst.idle.clear()

    def release(self, instance_id: str) -> None:
        inst = self._by_id.get(instance_id)
        if inst is not None:
            inst.in_flight -= 1
            inst.last_used = self._clock()
            if inst.quiet:
                inst.idle.set()
            if (
                inst.in_flight == 0
                and self.keep_alive(inst) == 0
                and inst.state is InstanceState.READY
                and all(i.in_flight <= 0 for i in self.instances_of(inst.version))
            ):
                asyncio.get_running_loop().create_task(self.unload(inst.version, reason="keep_alive=0"))

    def set_keep_alive(self, version: str, seconds: float | None) -> None:
        for inst in self.instances_of(version):
            inst.keep_alive = seconds

    def expires_in(self, version: str) -> float | None:
        """Seconds until the version's instances are unloaded as idle (inf: never; None: none loaded)."""
        of = self.instances_of(version)
        if not of:
            return None
        return max(i.last_used + self.keep_alive(i) for i in of) - self._clock()

    # -- loading ---------------------------------------------------------------------------------
    async def runtime_for(self, artifact: Artifact) -> str:
        """The runtime that serves ``artifact`` on this node (``agent/choice.py``)."""
        if self._choice.inventory is None:  # not started: asked now
            self._choice.inventory = await asyncio.to_thread(self.inventory.capacity)
        return await self._choice.runtime_for(artifact)

    async def ensure(
        self,
        artifact: Artifact,
        runtime: str,
        *,
        device: str = "cpu",
        replicas: int | None = None,
        placement: PlacementConstraint | None = None,
    ) -> LiveInstance:
        """Return a ready instance of ``artifact``'s version (the least loaded), starting one if none runs.

        Concurrent callers share one load; each waits at most ``load_timeout``; at most
        ``max_pending_loads`` callers wait at once (then a clear 503 busy). ``replicas``: how many
        instances of the version are wanted (remembered; None: as before): the others start alongside
        the first, in parallel, and join routing when ready. ``placement``: where they may run
        (remembered; None: as before): every start of one honours it.
        """
        version = artifact.name
        if replicas is not None:
            self._want(version, replicas)
        self._constrain(version, placement)
        self._specs[version] = (artifact, runtime, device)
        ready = self._ready(version)
        if ready:
            return self._least_loaded(version, ready)
        if self._closing:
            raise Unavailable("server is shutting down", retry_after=5)
        if self._waiting >= self._config.max_pending_loads:
            raise Unavailable(
                "server busy: maximum pending requests for loading models exceeded", retry_after=1
            )
        if artifact.name not in self._loading:
            await self._refuse_when_closed(version)
            await self._check_placement(version, runtime)
            # the load another caller started may have ended while these read the registry
            ready = self._ready(version)
            if ready:
                return self._least_loaded(version, ready)
        task = self._loading.get(artifact.name)
        if task is None:
            task = self._start_load(artifact, runtime, device, waited=True, name=f"load {artifact.name}")
            self._loading[artifact.name] = task
            task.add_done_callback(functools.partial(self._load_done, artifact.name))
            self._top_up(version)
        self._waiting += 1
        self._load_waiters[version] = self._load_waiters.get(version, 0) + 1
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=self._config.load_timeout)
        except TimeoutError:
            raise LoadTimeout(
                f"model {artifact.name!r} is still loading after {self._config.load_timeout:.0f} s",
                retry_after=5,
            ) from None
        finally:
            self._waiting -= 1
            self._load_waiters[version] -= 1
            if not self._load_waiters[version]:
                del self._load_waiters[version]
            if task.done() and not task.cancelled() and task.exception() is None:
                self._handed_over(task.result())

    def _least_loaded(self, version: str, ready: list[LiveInstance]) -> LiveInstance:
        self._top_up(version)
        return min(ready, key=lambda i: i.in_flight + i.pending)

    async def _refuse_when_closed(self, version: str) -> None:
        """A cordoned (or drained) node starts nothing new: the registry's state, so that a cordon made
        through any gateway counts. Read only when an instance would start, never per request."""
        node = await self._registry.nodes.find(self._config.node)
        if node is not None and node.closed:
            raise Unavailable(
                f"model {version!r} is not running and node {node.name!r} is {node.state}: nothing new "
                f"starts there (superollama nodes uncordon {node.name})",
                retry_after=30,
            )

    async def _check_placement(self, version: str, runtime: str) -> None:
        """This node against the version's constraint (``agent/placement.py``'s filters and wording): a
        pin to another node, labels this node lacks (``nodes label``), a GPU it does not have — 503.
        Memory is ``fitting``'s concern here, so the estimates are zero."""
        constraint = self.placement_of(version)
        if constraint.empty:
            return
        node = await self._registry.nodes.find(self._config.node)
        capacity = self._choice.inventory
        if capacity is None:
            capacity = await asyncio.to_thread(self.inventory.capacity)
        devices = [DeviceView("cpu", 1, 1)]
        for dev in capacity.get("devices") or ():
            if dev.get("kind") == "cuda":
                devices.append(DeviceView(str(dev["name"]), 1, 1))
        labels = (node.inventory.get("labels") if node is not None else None) or {}
        view = NodeView(
            name=self._config.node,
            devices=tuple(devices),
            runtimes=frozenset({runtime}),
            labels={str(k): str(v) for k, v in labels.items()},
            cordoned=node is not None and node.closed,
        )
        request = request_for(version, runtime, {"placement": constraint})
        zero = MemoryEstimate(0, 0, 0, 0, basis="not counted here")
        place([view], request, {"cpu": zero, "cuda": zero})

    def _handed_over(self, inst: LiveInstance) -> None:
        """An ``ensure`` caller that was counted in ``inst.pending`` has its instance: it acquires it in
        this same loop turn (or gave up); the drain looks again on the next turn."""
        inst.pending -= 1
        if inst.quiet:
            asyncio.get_running_loop().call_soon(self._settle, inst)

    @staticmethod
    def _settle(inst: LiveInstance) -> None:
        if inst.quiet:
            inst.idle.set()

    def _ready(self, version: str) -> list[LiveInstance]:
        return [i for i in self._live.values() if i.version == version and i.state is InstanceState.READY]

    def _want(self, version: str, replicas: int) -> None:
        if not 1 <= replicas <= MAX_REPLICAS:
            raise Conflict(f"replicas of {version}: 1 to {MAX_REPLICAS}", param="replicas")
        self._replicas[version] = replicas
        if replicas == 1:
            del self._replicas[version]

    def _coming(self, version: str) -> int:
        """Instances of the version ready or on their way (draining ones excluded)."""
        return len(self._ready(version)) + len(self._starting.get(version, ()))

    def _top_up(self, version: str) -> int:
        """Start (in the background, in parallel) the replicas the version lacks, as many as memory
        allows: how many were started."""
        spec = self._specs.get(version)
        missing = self.replicas(version) - self._coming(version)
        if spec is None or missing <= 0 or self._closing:
            return 0
        fit = self.fitting(spec[0], missing)
        if fit < missing:
            log.warning("%s: memory allows %d more instance(s), not the %d wanted", version, fit, missing)
        for _ in range(fit):
            task = self._start_load(*spec, waited=False, name=f"replica {version}")
            self._extra.setdefault(version, set()).add(task)
            task.add_done_callback(functools.partial(self._extra_done, version))
        return fit

    def _extra_done(self, version: str, task: asyncio.Task[LiveInstance]) -> None:
        tasks = self._extra.get(version)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._extra[version]
        if not task.cancelled() and task.exception() is not None:
            log.warning("a replica of %s failed to start: %s", version, task.exception())

    def memory_estimate(self, artifact: Artifact) -> MemoryEstimate:
        """What one more instance of ``artifact`` needs here (``agent/estimate.py``; the file size when its
        metadata says too little)."""
        runtime = next(iter(self._runtimes.values()), None)
        ctx, parallel = getattr(runtime, "ctx", None), int(getattr(runtime, "parallel", 1) or 1)
        per_seq = ctx // parallel if isinstance(ctx, int) and ctx > 0 else None
        try:
            return estimate(artifact.metadata, artifact.format, n_ctx=per_seq, n_parallel=parallel)
        except (ValueError, KeyError, TypeError):
            size = artifact.path.stat().st_size if artifact.path.is_file() else 0
            return MemoryEstimate(size, 0, 0, 0, basis="file size (no metadata to estimate from)")

    def fitting(self, artifact: Artifact, wanted: int) -> int:
        """How many of ``wanted`` more instances of ``artifact`` this node's free memory holds now."""
        need = max(self.memory_estimate(artifact).total, 1)
        free = self.available_memory() - _MEMORY_SLACK
        return max(0, min(wanted, free // need))

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
        """Run ``replicas`` instances of ``artifact``'s version: the missing ones start in parallel (when
        it runs, or ``start``) and are waited for; the surplus drains (no request cut within the drain
        bound) and stops. ``Conflict`` when this node's memory cannot hold the missing ones (nothing
        starts then). The version's ready instances, after."""
        version = artifact.name
        if placement is not None and placement != self.placement_of(version) and self._coming(version):
            before = self.placement_of(version)
            self._constrain(version, placement)
            try:  # a running version's new constraint must fit here too (its instances stay)
                await self._check_placement(version, runtime)
            except BaseException:
                self._constrain(version, before)
                raise
        self._want(version, replicas)
        self._constrain(version, placement)
        self._specs[version] = (artifact, runtime, device)
        if not start and not self._coming(version):
            return []
        missing = replicas - self._coming(version)
        if missing > 0:
            await self._refuse_when_closed(version)
            await self._check_placement(version, runtime)
            fit = self.fitting(artifact, missing)
            if fit < missing:
                est = self.memory_estimate(artifact)
                free = self.available_memory()
                raise Conflict(
                    f"memory does not allow {replicas} replicas of {version} on node {self._config.node!r}: "
                    f"each needs about {est.total >> 20} MiB ({est.basis}), {free >> 20} MiB is free, "
                    f"room for {fit} more, {missing} needed",
                    param="replicas",
                )
            if not self._ready(version) and version not in self._loading:
                await self.ensure(artifact, runtime, device=device)
            self._top_up(version)
            tasks = [*self._extra.get(version, ())]
            if version in self._loading:
                tasks.append(self._loading[version])
            results = await asyncio.gather(*map(asyncio.shield, tasks), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors and len(self._ready(version)) < replicas:
                raise errors[0]
        await self._trim(version)
        return self._ready(version)

    async def _trim(self, version: str) -> None:
        """Drain and stop the instances above the version's wanted count (those least loaded first)."""
        surplus = len(self._ready(version)) - self.replicas(version)
        if surplus <= 0:
            return
        ready = sorted(self._ready(version), key=lambda i: (i.in_flight + i.pending, -i.last_used))
        leaving = ready[:surplus]
        for inst in leaving:
            inst.state = InstanceState.DRAINING
        self._changed()
        await asyncio.gather(
            *(self._drain_stop(inst, reason=f"scaled to {self.replicas(version)}") for inst in leaving)
        )

    def _load_done(self, version: str, task: asyncio.Task[LiveInstance]) -> None:
        if self._loading.get(version) is task:
            del self._loading[version]
        if not task.cancelled():
            task.exception()  # retrieved: a failed load is reported to its waiters, not as "never retrieved"

    async def start_extra(
        self,
        artifact: Artifact,
        runtime: str,
        *,
        device: str = "cpu",
        options: Mapping[str, Any] | None = None,
    ) -> LiveInstance:
        """Start one more instance of ``artifact``'s version beside the wanted ones and wait until it is
        ready (a move: the caller then stops the instance it replaces). ``options`` reach the runtime's
        ``InstanceSpec`` (a cluster's ``node`` pins its placement)."""
        self._specs.setdefault(artifact.name, (artifact, runtime, device))
        return await self._start_load(
            artifact, runtime, device, waited=False, name=f"extra {artifact.name}", options=options
        )

    def _start_load(
        self,
        artifact: Artifact,
        runtime: str,
        device: str,
        *,
        waited: bool,
        name: str,
        options: Mapping[str, Any] | None = None,
    ) -> asyncio.Task[LiveInstance]:
        """Start one instance in a task (``waited``: ``ensure`` callers wait on this load); it counts as on
        its way (``_coming``) from now until it is in ``_live`` or has failed."""
        token = object()
        self._starting.setdefault(artifact.name, set()).add(token)
        constraint = self.placement_of(artifact.name)  # every start of the version honours it
        merged = {**({} if constraint.empty else {"placement": constraint}), **(options or {})}
        load = self._load(artifact, runtime, device, waited=waited, token=token, options=merged)
        return asyncio.create_task(load, name=name)

    async def _load(
        self,
        artifact: Artifact,
        runtime_name: str,
        device: str,
        *,
        waited: bool,
        token: object,
        options: Mapping[str, Any],
    ) -> LiveInstance:
        starting = self._starting.setdefault(artifact.name, set())
        try:
            return await self._load_one(
                artifact, runtime_name, device, waited=waited, token=token, options=options
            )
        finally:
            starting.discard(token)

    async def _load_one(
        self,
        artifact: Artifact,
        runtime_name: str,
        device: str,
        *,
        waited: bool,
        token: object,
        options: Mapping[str, Any],
    ) -> LiveInstance:
        runtime = self._runtimes.get(runtime_name)
        if runtime is None:
            raise ModelLoadFailed(f"runtime {runtime_name!r} is not available on node {self._config.node!r}")
        instance_id = f"inst-{uuid.uuid4().hex[:12]}"
        started_at = datetime.now(UTC)
        record = InstanceRecord(
            id=instance_id,
            version=artifact.name,
            node=self._config.node,
            runtime=runtime_name,
            state=InstanceState.LOADING,
            device=device,
            started_at=started_at,
        )
        await self._registry.instances.upsert(record)
        spec = InstanceSpec(
            instance_id=instance_id,
            version=artifact.name,
            artifact=artifact,
            runtime=runtime_name,
            device=device,
            options=options,
        )
        t0 = time.perf_counter()
        try:
            handle = await runtime.start(spec)
        except BaseException as exc:
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            await self._registry.instances.set_state(instance_id, InstanceState.FAILED, error=reason)
            await self._event(
                "instance.load", artifact.name, "failed", {"instance": instance_id, "error": reason}
            )
            log.warning("load of %s failed: %s", artifact.name, reason)
            if isinstance(exc, Exception) and not isinstance(exc, ModelLoadFailed):
                raise ModelLoadFailed(f"model {artifact.name!r} failed to load: {reason}") from exc
            raise
        load_seconds = time.perf_counter() - t0
        inst = LiveInstance(
            id=instance_id,
            version=artifact.name,
            runtime=runtime_name,
            device=getattr(handle, "device", None) or device,  # where placement put it, if it chose
            handle=handle,
            started_at=started_at,
            load_seconds=load_seconds,
            last_used=self._clock(),
        )
        if self._closing:
            await handle.stop(self._config.stop_timeout)
            raise Unavailable("server is shutting down", retry_after=5)
        self._live[instance_id] = inst
        self._starting[artifact.name].discard(token)
        inst._watcher = asyncio.create_task(self._watch(inst), name=f"watch {instance_id}")
        await self._registry.instances.upsert(inst.record(self._config.node))
        await self._event(
            "instance.load",
            artifact.name,
            "ok",
            {"instance": instance_id, "pid": handle.pid, "seconds": round(load_seconds, 3)},
        )
        log.info("loaded %s as %s (pid %d) in %.2f s", artifact.name, instance_id, handle.pid, load_seconds)
        self._changed()
        if waited:
            inst.pending = self._load_waiters.get(artifact.name, 0)  # they resume after this task ends
            if inst.pending:
                inst.idle.clear()
        return inst

    # -- unloading -------------------------------------------------------------------------------
    async def unload(self, version: str, *, reason: str = "requested", drain: float | None = None) -> bool:
        """Drain (no new requests; in-flight ones finish, bounded) then stop the version's instance."""
        return await self.stop_version(version, reason=reason, drain=drain) is not None

    async def stop_version(
        self, version: str, *, reason: str, drain: float | None = None, instance: str | None = None
    ) -> int | None:
        """Drain then stop the version's instances (``instance``: that one only; a replica that is not
        replaced unless the version is scaled again): the number of requests the drain bound cut short
        (``drain`` s, ``drain_timeout`` by default), or None when no instance ran."""
        if instance is None:
            self._replicas.pop(version, None)  # the version stops: its next start is one instance again
            tasks = [self._loading.get(version), *self._extra.get(version, ())]
            for task in tasks:
                if task is not None:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await task
        stopping = [i for i in self._ready(version) if instance is None or i.id == instance]
        if not stopping:
            return None
        for inst in stopping:
            inst.state = InstanceState.DRAINING
        self._changed()
        cuts = await asyncio.gather(
            *(self._drain_stop(inst, reason=reason, drain=drain) for inst in stopping)
        )
        return sum(cuts)

    async def _drain_stop(self, inst: LiveInstance, *, reason: str, drain: float | None = None) -> int:
        version = inst.version
        bound = self._config.drain_timeout if drain is None else drain
        deadline = asyncio.get_running_loop().time() + bound
        while not inst.quiet:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            inst.idle.clear()
            await wait_set(inst.idle, left)
        cut = max(inst.in_flight, 0) + max(inst.pending, 0)
        if cut:
            log.warning("%s: %d request(s) still in flight after the %.1f s drain bound", version, cut, bound)
        await self._stop(inst, reason=reason, cut=cut)
        return cut

    async def _stop(self, inst: LiveInstance, *, reason: str, cut: int = 0) -> None:
        inst.state = InstanceState.DRAINING
        self._live.pop(inst.id, None)
        self._changed()
        await inst.handle.stop(self._config.stop_timeout)
        if inst._watcher is not None:
            inst._watcher.cancel()
        inst.state = InstanceState.STOPPED
        self._remember(inst.id, "stopped")
        await self._registry.instances.set_state(inst.id, InstanceState.STOPPED)
        detail: dict[str, object] = {"instance": inst.id, "reason": reason, "cut": cut}
        await self._event("instance.stop", inst.version, "ok", detail)
        log.info("stopped %s (%s): %s", inst.version, inst.id, reason)

    async def _watch(self, inst: LiveInstance) -> None:
        code = await inst.handle.wait()
        self._mark_crashed(inst)
        if inst.state is not InstanceState.FAILED:
            return  # an orderly stop
        error = f"process exited with code {code}"
        log.warning("instance %s of %s crashed: %s", inst.id, inst.version, error)
        await self._registry.instances.set_state(inst.id, InstanceState.FAILED, error=error)
        await self._event("instance.crashed", inst.version, "failed", {"instance": inst.id, "error": error})
        if self.replicas(inst.version) > 1 and self._ready(inst.version) and self._top_up(inst.version):
            log.info("%s: replacing crashed replica %s", inst.version, inst.id)

    def _mark_crashed(self, inst: LiveInstance) -> None:
        """Its process exited while it served: out of routing at once, so that ``ensure`` starts another
        (idempotent; the watcher, or ``ended`` if it sees the exit first)."""
        if inst.state is not InstanceState.READY or self._closing:
            return
        inst.state = InstanceState.FAILED
        self._live.pop(inst.id, None)
        self._remember(inst.id, "crashed")
        self._changed()

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(self._config.reap_interval)
            now = self._clock()
            for version in sorted({i.version for i in self._live.values()}):
                of = self.instances_of(version)  # replicas idle out together, when all of them are idle
                idle = min(now - i.last_used for i in of)
                if any(i.state is InstanceState.READY for i in of) and all(
                    i.in_flight == 0 and now - i.last_used >= self.keep_alive(i) for i in of
                ):
                    inst = of[0]
                    try:
                        await self.unload(inst.version, reason=f"idle for {idle:.0f} s")
                    except Exception:
                        log.exception("idle unload of %s failed", inst.version)

    async def ended(self, instance_id: str, *, within: float = 2.0) -> Ending:
        """How the instance a request could not reach has ended: ``crashed`` (its process exited on its
        own), ``stopped`` (we stopped it), or ``running`` if its process still runs after ``within`` s
        (the exit of a killed process is seen within milliseconds; this waits for that)."""
        inst = self._by_id.get(instance_id)
        if inst is None:
            return self._ended.get(instance_id, "stopped")
        exited = asyncio.ensure_future(inst.handle.wait())
        done, _ = await asyncio.wait({exited}, timeout=within)
        if not done:
            exited.cancel()
            return "running"
        self._mark_crashed(inst)  # if the watcher has not yet
        return self._ended.get(instance_id, "crashed" if inst.state is InstanceState.FAILED else "stopped")

    def _remember(self, instance_id: str, ending: Ending) -> None:
        self._ended[instance_id] = ending
        while len(self._ended) > _ENDINGS_KEPT:
            self._ended.popitem(last=False)

    def keep_alive(self, inst: LiveInstance) -> float:
        """Seconds ``inst`` may stay idle before it is unloaded (inf: never)."""
        return self._config.keep_alive if inst.keep_alive is None else inst.keep_alive

    async def _replace_leftovers(self) -> None:
        """Processes recorded as running by an earlier agent: adopt them (a runtime that can hands back a
        handle to a healthy one: it serves on, not reloaded) or stop them (never orphans)."""
        for record in await self._leftover_records():
            runtime = self._runtimes.get(record.runtime)
            outcome = "gone"
            if runtime is not None and record.pid is not None:
                handle = await runtime.adopt(record)
                if handle is not None and record.state is InstanceState.READY and not self._adopted(record):
                    self._keep(record, handle)
                    await self._event("instance.adopted", record.version, "ok", {"instance": record.id})
                    continue
                if handle is not None:
                    await handle.stop(self._config.stop_timeout)
                outcome = "replaced"
            await self._registry.instances.set_state(
                record.id, InstanceState.STOPPED, error="agent restarted"
            )
            await self._event(
                "instance.replaced", record.version, "ok", {"instance": record.id, "was": outcome}
            )

    async def _leftover_records(self) -> list[InstanceRecord]:
        """The instances an earlier agent of this node recorded as running (a cluster's: every node's)."""
        return await self._registry.instances.list(node=self._config.node, states=_ACTIVE)

    def _adopted(self, record: InstanceRecord) -> bool:
        return record.id in self._live

    def _keep(self, record: InstanceRecord, handle: InstanceHandle) -> None:
        inst = LiveInstance(
            id=record.id,
            version=record.version,
            runtime=record.runtime,
            device=record.device or "cpu",
            handle=handle,
            started_at=record.started_at or datetime.now(UTC),
            load_seconds=0.0,
            last_used=self._clock(),
        )
        self._live[inst.id] = inst
        adopted = len(self.instances_of(inst.version))
        if adopted > self.replicas(inst.version):
            self._replicas[inst.version] = adopted  # the replicas an earlier agent ran serve on
        inst._watcher = asyncio.create_task(self._watch(inst), name=f"watch {inst.id}")
        log.info("adopted %s as %s (pid %d)", inst.version, inst.id, handle.pid)
        self._changed()

    # -- helpers ---------------------------------------------------------------------------------
    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    async def _event(self, action: str, target: str, result: str, detail: dict[str, object]) -> None:
        event = EventRecord(action=action, target=target, result=result, actor="agent", detail=detail)
        for listener in self._event_listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s %s", action, target)
        try:
            await self._registry.events.add(event)
        except Exception:
            log.exception("could not record event %s %s", action, target)


def _available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)
