"""The agent's scheduling rules, driven through the Runtime seam with a controllable runtime.

The real llama.cpp runtime is exercised end to end in tests/e2e; here a runtime double lets each rule
(single-flight loads, bounded waits, busy, crash detection, idle unloading, leftovers) be forced exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
from tests.waiting import wait_until

from superollama.agent import AgentConfig, LocalAgent
from superollama.core import (
    Artifact,
    Endpoint,
    EventRecord,
    InstanceHandle,
    InstanceRecord,
    InstanceSpec,
    InstanceState,
    NodeRecord,
)
from superollama.errors import LoadTimeout, ModelLoadFailed, Unavailable
from superollama.registry import Registry, open_registry


class Handle:
    def __init__(self, spec: InstanceSpec, pid: int) -> None:
        self.instance_id = spec.instance_id
        self.pid = pid
        self.endpoint = Endpoint(f"http://127.0.0.1:{pid}", "openai", spec.version)
        self.exited = asyncio.Event()
        self.code = 0
        self.stops = 0

    def alive(self) -> bool:
        return not self.exited.is_set()

    async def wait(self) -> int:
        await self.exited.wait()
        return self.code

    async def stop(self, timeout: float) -> None:
        self.stops += 1
        self.exited.set()

    def crash(self, code: int = -9) -> None:
        self.code = code
        self.exited.set()


class GateRuntime:
    name: ClassVar[str] = "gate"
    provider: ClassVar[str] = "openai"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.starts = 0
        self.fail: str | None = None
        self.handles: list[Handle] = []
        self.adopted: list[str] = []
        self.keep: dict[str, Handle] = {}  # handles ``adopt`` gives back (a healthy leftover)

    def accepts(self, artifact: Artifact) -> bool:
        return True

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        self.starts += 1
        n = self.starts  # each start its own pid and port, loads in parallel too
        await self.gate.wait()
        if self.fail:
            raise ModelLoadFailed(self.fail)
        handle = Handle(spec, 40000 + n)
        self.handles.append(handle)
        return handle

    async def adopt(self, record: InstanceRecord) -> InstanceHandle | None:
        self.adopted.append(record.id)
        return self.keep.get(record.id)


class Clock:
    """The agent's injected clock; ``reads`` counts the agent's looks at it (each pass of the idle reaper
    reads it once), so a test can wait for a pass that saw a new time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    async def passes(self, n: int = 2) -> None:
        """Return once the clock was read ``n`` more times: with nothing else reading it, ``n`` passes of
        the reaper have looked at the current time and made their decision."""
        target = self.reads + n
        await wait_until(lambda: self.reads >= target, what=f"{n} reaper passes")


ART = Artifact(name="m:1", format="gguf", path=Path("/dev/null"))


@pytest.fixture
async def registry(tmp_path: Path) -> Registry:
    reg = await open_registry(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    yield reg  # type: ignore[misc]
    await reg.close()


def make_agent(
    registry: Registry, runtime: GateRuntime, clock: Clock | None = None, **config: float
) -> LocalAgent:
    cfg = AgentConfig(reap_interval=0.01, **config)  # type: ignore[arg-type]
    return LocalAgent(registry, {"gate": runtime}, cfg, clock=clock or Clock())


async def test_concurrent_requests_share_one_load(registry: Registry) -> None:
    runtime = GateRuntime()
    runtime.gate.clear()
    agent = make_agent(registry, runtime)
    await agent.start()
    waiters = [asyncio.create_task(agent.ensure(ART, "gate")) for _ in range(5)]
    await wait_until(lambda: runtime.starts == 1, what="the load to reach the runtime")
    assert agent.loading("m:1")
    runtime.gate.set()
    instances = await asyncio.gather(*waiters)
    assert runtime.starts == 1 and len({id(i) for i in instances}) == 1
    assert (await registry.instances.get(instances[0].id)).state is InstanceState.READY
    await agent.close()
    assert runtime.handles[0].stops == 1
    assert (await registry.instances.get(instances[0].id)).state is InstanceState.STOPPED


async def test_a_caller_whose_checks_outlast_the_load_takes_its_instance(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller reads the registry (cordon, placement) before it joins or starts a load; if the load
    another caller started ends meanwhile, it must take that instance, not start a second one."""
    runtime = GateRuntime()
    agent = make_agent(registry, runtime)
    await agent.start()
    find = registry.nodes.find
    held = asyncio.Event()
    release = asyncio.Event()

    async def slow_second_find(name: str) -> NodeRecord | None:
        if held.is_set():
            return await find(name)
        held.set()  # the first caller's read is held until the other caller's load has ended
        await release.wait()
        return await find(name)

    monkeypatch.setattr(registry.nodes, "find", slow_second_find)
    late = asyncio.create_task(agent.ensure(ART, "gate"))
    await held.wait()
    first = await agent.ensure(ART, "gate")
    release.set()
    assert await late is first
    assert runtime.starts == 1
    await agent.close()


async def test_a_slow_load_times_out_but_keeps_loading(registry: Registry) -> None:
    runtime = GateRuntime()
    runtime.gate.clear()
    agent = make_agent(registry, runtime, load_timeout=0.05)
    await agent.start()
    with pytest.raises(LoadTimeout) as info:
        await agent.ensure(ART, "gate")
    assert info.value.status == 503 and info.value.retry_after
    runtime.gate.set()
    # the same load goes on in the background and ends ready (its registry writes take a busy machine
    # longer than the 50 ms load timeout, so wait for it rather than race it)
    await wait_until(
        lambda: any(i.state is InstanceState.READY for i in agent.instances_of("m:1")), what="the load's end"
    )
    inst = await agent.ensure(ART, "gate")
    assert runtime.starts == 1 and inst.version == "m:1"
    await agent.close()


async def test_too_many_waiters_is_busy(registry: Registry) -> None:
    runtime = GateRuntime()
    runtime.gate.clear()
    agent = make_agent(registry, runtime, max_pending_loads=2)
    await agent.start()
    waiters = [asyncio.create_task(agent.ensure(ART, "gate")) for _ in range(2)]
    await wait_until(lambda: agent._waiting == 2, what="both callers waiting on the load")
    with pytest.raises(Unavailable, match="busy"):
        await agent.ensure(ART, "gate")
    runtime.gate.set()
    await asyncio.gather(*waiters)
    await agent.close()


async def test_failed_load_is_reported_and_retried_next_time(registry: Registry) -> None:
    runtime = GateRuntime()
    runtime.fail = "bad magic"
    agent = make_agent(registry, runtime)
    await agent.start()
    with pytest.raises(ModelLoadFailed, match="bad magic"):
        await agent.ensure(ART, "gate")
    events = await registry.events.list(action="instance.load")
    assert [(e.result, e.detail["error"]) for e in events] == [("failed", "bad magic")]
    runtime.fail = None
    assert (await agent.ensure(ART, "gate")).version == "m:1"
    assert runtime.starts == 2
    await agent.close()


async def test_unknown_runtime_is_a_load_failure(registry: Registry) -> None:
    agent = make_agent(registry, GateRuntime())
    await agent.start()
    with pytest.raises(ModelLoadFailed, match="runtime 'vllm'"):
        await agent.ensure(ART, "vllm")
    await agent.close()


async def test_crash_is_detected_and_the_next_ensure_reloads(registry: Registry) -> None:
    runtime = GateRuntime()
    agent = make_agent(registry, runtime)
    changes: list[int] = []
    agent.subscribe(lambda: changes.append(1))
    await agent.start()
    first = await agent.ensure(ART, "gate")
    runtime.handles[0].crash()
    await wait_until(lambda: agent.instance_for("m:1") is None, what="the crash to be noticed")
    assert len(changes) >= 2

    async def failed() -> bool:
        return (await registry.instances.get(first.id)).state is InstanceState.FAILED

    await wait_until(failed, what="the instance recorded as failed")
    record = await registry.instances.get(first.id)
    assert "-9" in (record.error or "")
    second = await agent.ensure(ART, "gate")
    assert second.id != first.id
    await agent.close()


async def test_idle_instances_unload_after_keep_alive(registry: Registry) -> None:
    runtime = GateRuntime()
    clock = Clock()
    agent = make_agent(registry, runtime, clock, keep_alive=60)
    await agent.start()
    inst = await agent.ensure(ART, "gate")
    agent.acquire(inst.id)
    clock.now += 120
    await clock.passes()  # the reaper looked at an instance idle past keep_alive, but in use
    assert agent.instance_for("m:1") is inst  # busy: never unloaded under a request
    agent.release(inst.id)
    clock.now += 59
    await clock.passes()
    assert agent.instance_for("m:1") is inst
    clock.now += 2
    await wait_until(lambda: agent.instance_for("m:1") is None, what="the idle unload")
    assert runtime.handles[0].stops == 1
    await agent.close()


async def test_unload_drains_in_flight_requests_first(registry: Registry) -> None:
    runtime = GateRuntime()
    agent = make_agent(registry, runtime)
    await agent.start()
    inst = await agent.ensure(ART, "gate")
    agent.acquire(inst.id)
    unloading = asyncio.create_task(agent.unload("m:1"))
    await wait_until(lambda: inst.state is InstanceState.DRAINING, what="the unload to start draining")
    assert not inst.idle.is_set()  # what the draining unload waits on: it cannot have gone further
    assert not unloading.done() and runtime.handles[0].stops == 0
    assert agent.instance_for("m:1") is inst
    agent.release(inst.id)
    assert await unloading
    assert runtime.handles[0].stops == 1
    await agent.close()


async def test_leftover_instances_are_replaced_at_start(registry: Registry) -> None:
    await registry.instances.upsert(
        InstanceRecord(
            id="old", version="m:1", node="local", runtime="gate", state=InstanceState.READY, pid=123
        )
    )
    runtime = GateRuntime()
    agent = make_agent(registry, runtime)
    await agent.start()
    assert runtime.adopted == ["old"]
    assert (await registry.instances.get("old")).state is InstanceState.STOPPED
    assert [e.detail["instance"] for e in await registry.events.list(action="instance.replaced")] == ["old"]
    await agent.close()


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) until ``condition`` holds, letting the loop run meanwhile."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_drain_waits_for_the_callers_waiting_on_the_load(registry: Registry) -> None:
    """A request that waited for the load counts as in flight from the moment the load ends: the stop
    that waited for the same load must not take the instance before that request acquires it."""
    runtime = GateRuntime()
    runtime.gate.clear()
    agent = make_agent(registry, runtime)
    await agent.start()
    finish = asyncio.Event()
    stops_seen: list[int] = []

    async def request() -> None:
        inst = await agent.ensure(ART, "gate")
        agent.acquire(inst.id)
        stops_seen.append(runtime.handles[0].stops)
        await finish.wait()
        agent.release(inst.id)

    caller = asyncio.create_task(request())
    await _until(lambda: runtime.starts == 1)
    stopping = asyncio.create_task(agent.unload("m:1", reason="removed"))
    await _until(lambda: agent.loading("m:1"))
    runtime.gate.set()
    await _until(lambda: bool(stops_seen))
    assert stops_seen == [0]  # the instance was still running when the request took it
    assert not stopping.done() and runtime.handles[0].stops == 0
    finish.set()
    assert await stopping
    await caller
    assert runtime.handles[0].stops == 1
    await agent.close()


async def test_the_drain_bound_cuts_what_is_left_and_counts_it(registry: Registry) -> None:
    runtime = GateRuntime()
    agent = make_agent(registry, runtime, drain_timeout=30)
    events: list[EventRecord] = []
    agent.on_event(events.append)
    await agent.start()
    inst = await agent.ensure(ART, "gate")
    agent.acquire(inst.id)
    # the bound is what is under test: 0.05 s instead of the configured 30 s
    assert await agent.stop_version("m:1", reason="removed", drain=0.05) == 1
    assert runtime.handles[0].stops == 1
    stop = next(e for e in events if e.action == "instance.stop")
    assert stop.detail["cut"] == 1 and stop.detail["reason"] == "removed"
    assert await agent.stop_version("m:1", reason="removed") is None  # nothing runs any more
    await agent.close()


async def test_ended_tells_a_crash_from_a_stop_and_from_a_running_process(registry: Registry) -> None:
    runtime = GateRuntime()
    agent = make_agent(registry, runtime)
    await agent.start()
    first = await agent.ensure(ART, "gate")
    assert await agent.ended(first.id, within=0.05) == "running"
    runtime.handles[0].crash()
    assert await agent.ended(first.id) == "crashed"
    await _until(lambda: agent.instance_for("m:1") is None)
    assert await agent.ended(first.id) == "crashed"  # remembered once the watcher removed it
    second = await agent.ensure(ART, "gate")
    assert await agent.unload("m:1")
    assert await agent.ended(second.id) == "stopped"
    assert await agent.ended("inst-never-seen") == "stopped"
    await agent.close()


async def test_a_healthy_leftover_the_runtime_adopts_serves_on_without_a_reload(registry: Registry) -> None:
    spec = InstanceSpec(instance_id="a", version="m:1", artifact=ART, runtime="gate")
    runtime = GateRuntime()
    other_spec = replace(spec, instance_id="b")
    runtime.keep = {"a": Handle(spec, 777), "b": Handle(other_spec, 778)}  # two healthy replicas
    for id_, pid in (("a", 777), ("b", 778)):
        record = InstanceRecord(
            id=id_, version="m:1", node="local", runtime="gate", state=InstanceState.READY
        )
        await registry.instances.upsert(replace(record, pid=pid))
    agent = make_agent(registry, runtime)
    changes: list[int] = []
    agent.subscribe(lambda: changes.append(1))
    await agent.start()
    inst = agent.instance_for("m:1")
    assert inst is not None and inst.state is InstanceState.READY
    kept, other = runtime.keep[inst.id], runtime.keep["b" if inst.id == "a" else "a"]
    assert inst.handle is kept and kept.stops == 0
    assert changes  # the controller republishes the routes with it
    # the replicas an earlier agent ran serve on, both of them, and stay wanted
    assert {i.id for i in agent.instances_of("m:1")} == {"a", "b"} and agent.replicas("m:1") == 2
    assert (await agent.ensure(ART, "gate")) in agent.instances_of("m:1") and runtime.starts == 0  # no reload
    assert other.stops == 0
    adopted = [e.detail["instance"] for e in await registry.events.list(action="instance.adopted")]
    assert sorted(adopted) == ["a", "b"]
    kept.crash()  # an adopted process is watched like one the agent started: replaced to keep 2
    await wait_until(lambda: runtime.starts == 1, what="the crashed adopted replica replaced")
    await wait_until(lambda: len(agent.instances_of("m:1")) == 2, what="two replicas again")
    assert inst.id not in {i.id for i in agent.instances_of("m:1")}
    await wait_until(lambda: not agent.loading("m:1"), what="the replacement's load finished")
    await agent.close()
