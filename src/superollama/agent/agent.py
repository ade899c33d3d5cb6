"""The node agent: runs backend instances for versions on this node and reports what it observes.

In a plain ``serve`` it lives in the server process; with ``serve --workers N`` in a process of its own
(``workers.agent_process``), which the primary worker drives through ``workers.remote_agent`` — the same
``NodeAgent`` seam (``agent.instance``) either way, so no gateway process owns a model process. It owns:
- one live instance per version at most (loaded on demand, single-flight: concurrent requests share a load);
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

from superollama.agent.choice import RuntimeChoice
from superollama.agent.instance import AgentConfig, Ending, LiveInstance
from superollama.agent.inventory import Inventory
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
from superollama.errors import LoadTimeout, ModelLoadFailed, Unavailable
from superollama.registry import Registry

__all__ = ["LocalAgent"]

log = logging.getLogger("superollama.agent")

_ACTIVE = (InstanceState.PENDING, InstanceState.LOADING, InstanceState.READY, InstanceState.DRAINING)
_ENDINGS_KEPT = 256  # how many ended instances ``ended`` remembers (requests reach it within seconds)


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
        self._live: dict[str, LiveInstance] = {}  # by version
        self._by_id: dict[str, LiveInstance] = {}
        self._loading: dict[str, asyncio.Task[LiveInstance]] = {}
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
        await self._registry.nodes.upsert(
            NodeRecord(name=self._config.node, address="local", state="ready", inventory=capacity)
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
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
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

    def instance_for(self, version: str) -> LiveInstance | None:
        return self._live.get(version)

    def loading(self, version: str) -> bool:
        return version in self._loading

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
            if inst.in_flight == 0 and self.keep_alive(inst) == 0 and inst.state is InstanceState.READY:
                asyncio.get_running_loop().create_task(self.unload(inst.version, reason="keep_alive=0"))

    def set_keep_alive(self, version: str, seconds: float | None) -> None:
        inst = self._live.get(version)
        if inst is not None:
            inst.keep_alive = seconds

    def expires_in(self, version: str) -> float | None:
        """Seconds until the version's instance is unloaded as idle (inf: never; None: none loaded)."""
        inst = self._live.get(version)
        return None if inst is None else inst.last_used + self.keep_alive(inst) - self._clock()

    # -- loading ---------------------------------------------------------------------------------
    async def runtime_for(self, artifact: Artifact) -> str:
        """The runtime that serves ``artifact`` on this node (``agent/choice.py``)."""
        if self._choice.inventory is None:  # not started: asked now
            self._choice.inventory = await asyncio.to_thread(self.inventory.capacity)
        return await self._choice.runtime_for(artifact)

    async def ensure(self, artifact: Artifact, runtime: str, *, device: str = "cpu") -> LiveInstance:
        """Return the ready instance of ``artifact``'s version, starting one if none runs.

        Concurrent callers share one load; each waits at most ``load_timeout``; at most
        ``max_pending_loads`` callers wait at once (then a clear 503 busy).
        """
        live = self._live.get(artifact.name)
        if live is not None and live.state is InstanceState.READY:
            return live
        if self._closing:
            raise Unavailable("server is shutting down", retry_after=5)
        if self._waiting >= self._config.max_pending_loads:
            raise Unavailable(
                "server busy: maximum pending requests for loading models exceeded", retry_after=1
            )
        task = self._loading.get(artifact.name)
        if task is None:
            task = asyncio.create_task(self._load(artifact, runtime, device), name=f"load {artifact.name}")
            self._loading[artifact.name] = task
            task.add_done_callback(functools.partial(self._load_done, artifact.name))
        self._waiting += 1
        version = artifact.name
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

    def _load_done(self, version: str, task: asyncio.Task[LiveInstance]) -> None:
        if self._loading.get(version) is task:
            del self._loading[version]
        if not task.cancelled():
            task.exception()  # retrieved: a failed load is reported to its waiters, not as "never retrieved"

    async def _load(self, artifact: Artifact, runtime_name: str, device: str) -> LiveInstance:
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
        self._live[artifact.name] = inst
        self._by_id[instance_id] = inst
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
        inst.pending = self._load_waiters.get(artifact.name, 0)  # they resume after this task ends
        if inst.pending:
            inst.idle.clear()
        return inst

    # -- unloading -------------------------------------------------------------------------------
    async def unload(self, version: str, *, reason: str = "requested", drain: float | None = None) -> bool:
        """Drain (no new requests; in-flight ones finish, bounded) then stop the version's instance."""
        return await self.stop_version(version, reason=reason, drain=drain) is not None

    async def stop_version(self, version: str, *, reason: str, drain: float | None = None) -> int | None:
        """Drain then stop the version's instance: the number of requests the drain bound cut short
        (``drain`` s, ``drain_timeout`` by default), or None when no instance ran."""
        task = self._loading.get(version)
        if task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        inst = self._live.get(version)
        if inst is None or inst.state is not InstanceState.READY:
            return None
        inst.state = InstanceState.DRAINING
        self._changed()
        bound = self._config.drain_timeout if drain is None else drain
        deadline = asyncio.get_running_loop().time() + bound
        while not inst.quiet:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            inst.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(inst.idle.wait(), left)
        cut = max(inst.in_flight, 0) + max(inst.pending, 0)
        if cut:
            log.warning("%s: %d request(s) still in flight after the %.1f s drain bound", version, cut, bound)
        await self._stop(inst, reason=reason, cut=cut)
        return cut

    async def _stop(self, inst: LiveInstance, *, reason: str, cut: int = 0) -> None:
        inst.state = InstanceState.DRAINING
        if self._live.get(inst.version) is inst:
            del self._live[inst.version]
        self._by_id.pop(inst.id, None)
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

    def _mark_crashed(self, inst: LiveInstance) -> None:
        """Its process exited while it served: out of routing at once, so that ``ensure`` starts another
        (idempotent; the watcher, or ``ended`` if it sees the exit first)."""
        if inst.state is not InstanceState.READY or self._closing:
            return
        inst.state = InstanceState.FAILED
        if self._live.get(inst.version) is inst:
            del self._live[inst.version]
        self._by_id.pop(inst.id, None)
        self._remember(inst.id, "crashed")
        self._changed()

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(self._config.reap_interval)
            now = self._clock()
            for inst in list(self._live.values()):
                idle = now - inst.last_used
                if (
                    inst.state is InstanceState.READY
                    and inst.in_flight == 0
                    and idle >= self.keep_alive(inst)
                ):
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
        return record.version in self._live

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
        self._live[inst.version] = inst
        self._by_id[inst.id] = inst
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
