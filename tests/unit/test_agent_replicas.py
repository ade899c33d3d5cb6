"""Replicas: N instances of one version on one node (``LocalAgent``, and ``RemoteAgent`` over the agent
process's socket), driven through the Runtime seam with the gated runtime of ``test_agent``.

Each replica is its own process (here: its own handle, pid and endpoint) and instance id; they start in
parallel, the first ready one serves, a crashed one is replaced, a surplus one drains before it stops,
they idle out together, and memory that cannot hold them is said before anything starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.unit.test_agent import ART, Clock, GateRuntime, make_agent
from tests.waiting import wait_until

from superollama.agent import LocalAgent
from superollama.agent.agent import _MEMORY_SLACK
from superollama.core import Artifact, InstanceState
from superollama.core.routing import RouteTarget, pick_instance
from superollama.errors import Conflict
from superollama.registry import Registry, open_registry
from superollama.workers.agent_process import AgentServer
from superollama.workers.remote_agent import RemoteAgent


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await open_registry(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    yield reg
    await reg.close()


def _ready(agent: LocalAgent | RemoteAgent, version: str = ART.name) -> list[str]:
    return [i.id for i in agent.instances_of(version) if i.state is InstanceState.READY]


async def _settled(agent: LocalAgent) -> None:
    """No load in progress: each has written its registry rows (a replica routes before that)."""
    await wait_until(lambda: not agent.loading(ART.name), what="the loads to finish")


async def test_replicas_start_in_parallel_each_its_own_process_and_the_first_serves(
    registry: Registry,
) -> None:
    runtime = GateRuntime()
    runtime.gate.clear()
    agent = make_agent(registry, runtime)
    await agent.start()
    waiters = [asyncio.create_task(agent.ensure(ART, "gate", replicas=3)) for _ in range(4)]
    # all three loads reach the runtime before any finishes: they run side by side
    await wait_until(lambda: runtime.starts == 3, what="three loads at once")
    assert agent.loading(ART.name) and agent.replicas(ART.name) == 3
    runtime.gate.set()
    got = await asyncio.gather(*waiters)
    assert len({i.id for i in got}) == 1  # the callers share the first load
    await wait_until(lambda: len(_ready(agent)) == 3, what="three ready replicas")
    instances = agent.instances_of(ART.name)
    assert len({i.id for i in instances}) == 3
    assert len({i.pid for i in instances}) == 3
    assert len({i.handle.endpoint.base_url for i in instances}) == 3
    assert runtime.starts == 3  # asking again starts nothing more
    await agent.ensure(ART, "gate", replicas=3)
    assert runtime.starts == 3
    await _settled(agent)
    await agent.close()
    assert all(h.stops == 1 for h in runtime.handles)


async def test_requests_spread_over_the_replicas_by_requests_in_flight(registry: Registry) -> None:
    runtime = GateRuntime()
    agent = make_agent(registry, runtime)
    await agent.start()
    await agent.scale(ART, "gate", 2)
    a, b = agent.instances_of(ART.name)
    targets = tuple(RouteTarget(i.id, i.handle.endpoint) for i in (a, b))
    picked = []
    for _ in range(10):  # what the data plane does per request: pick, then count it in flight
        target = pick_instance(targets, agent.in_flight)
        agent.acquire(target.instance_id)
        picked.append(target.instance_id)
    assert picked.count(a.id) == 5 and picked.count(b.id) == 5
    # a caller of ensure gets the least loaded replica
    agent.release(a.id)
    assert (await agent.ensure(ART, "gate")) is a
    agent.release(a.id)
    agent.release(a.id)
    assert agent.instance_for(ART.name) is a
    await agent.close()


async def test_a_crashed_replica_is_replaced_to_keep_the_count(registry: Registry) -> None:
    runtime = GateRuntime()
    agent = make_agent(registry, runtime)
    await agent.start()
    await agent.scale(ART, "gate", 2)
    first, second = agent.instances_of(ART.name)
    assert runtime.starts == 2
    runtime.handles[0].crash()
    await wait_until(lambda: runtime.starts == 3, what="a replacement started")
    await wait_until(lambda: len(_ready(agent)) == 2, what="two ready replicas again")
    assert first.id not in _ready(agent) and second.id in _ready(agent)
    assert await agent.ended(first.id) == "crashed"
    await _settled(agent)
    await agent.close()


async def test_one_replica_crashing_is_not_restarted_eagerly(registry: Registry) -> None:
    runtime = GateRuntime()
    agent = make_agent(registry, runtime)
    await agent.start()
    await agent.ensure(ART, "gate")
    runtime.handles[0].crash()
    await wait_until(lambda: agent.instance_for(ART.name) is None, what="the crash noticed")
    await asyncio.sleep(0.05)
    assert runtime.starts == 1  # replicas=1 as before: the next request loads it again
    await agent.close()


async def test_scaling_down_drains_the_surplus_without_cutting_a_request(registry: Registry) -> None:
    runtime = GateRuntime()
    agent = make_agent(registry, runtime)
    await agent.start()
    await agent.scale(ART, "gate", 3)
    a, b, c = agent.instances_of(ART.name)
    agent.acquire(a.id)
    agent.acquire(b.id)
    agent.acquire(b.id)
    scaling = asyncio.create_task(agent.scale(ART, "gate", 1))
    # the two least loaded leave routing at once (c idle, a with one request); b, the busiest, stays
    await wait_until(lambda: a.state is InstanceState.DRAINING, what="the surplus draining")
    assert c.state in (InstanceState.DRAINING, InstanceState.STOPPED) and b.state is InstanceState.READY
    await wait_until(lambda: c.state is InstanceState.STOPPED, what="the idle surplus stopped")
    await asyncio.sleep(0.05)
    assert not scaling.done() and a.state is InstanceState.DRAINING  # a's request is not cut
    agent.release(a.id)
    assert [i.id for i in await scaling] == [b.id]
    assert a.state is InstanceState.STOPPED and _ready(agent) == [b.id]
    stops = [e.detail for e in await registry.events.list(action="instance.stop")]
    assert sorted(d["instance"] for d in stops) == sorted([a.id, c.id])
    assert all(d["cut"] == 0 for d in stops)
    await agent.close()


async def test_replicas_idle_out_together(registry: Registry) -> None:
    runtime = GateRuntime()
    clock = Clock()
    agent = make_agent(registry, runtime, clock, keep_alive=60)
    await agent.start()
    await agent.scale(ART, "gate", 2)
    a, _b = agent.instances_of(ART.name)
    agent.acquire(a.id)
    clock.now += 120
    await clock.passes()
    assert len(_ready(agent)) == 2  # one replica busy: neither idles out (the count stays)
    agent.release(a.id)
    clock.now += 61
    await wait_until(lambda: agent.instances_of(ART.name) == [], what="both replicas unloaded")
    assert all(h.stops == 1 for h in runtime.handles)

    async def recorded() -> bool:  # the unload has written its rows: closing now cuts no write short
        return len(await registry.events.list(action="instance.stop")) == 2

    await wait_until(recorded, what="both stops recorded")
    await agent.close()


async def test_memory_that_cannot_hold_the_replicas_is_said_before_anything_starts(
    registry: Registry, tmp_path: Path
) -> None:
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"\0" * (4 << 20))  # no GGUF metadata: its file size is the estimate
    artifact = Artifact(name="m:1", format="gguf", path=weights)
    runtime = GateRuntime()
    agent = make_agent(registry, runtime)
    agent.available_memory = lambda: _MEMORY_SLACK + (9 << 20)  # room for two of 4 MiB
    await agent.start()
    with pytest.raises(Conflict, match=r"memory does not allow 3 replicas of m:1") as info:
        await agent.scale(artifact, "gate", 3)
    assert "room for 2 more, 3 needed" in info.value.message and info.value.status == 409
    assert runtime.starts == 0
    assert len(await agent.scale(artifact, "gate", 2)) == 2
    await agent.close()


async def test_stopping_a_version_stops_every_replica_and_one_can_be_stopped_alone(
    registry: Registry,
) -> None:
    runtime = GateRuntime()
    agent = make_agent(registry, runtime)
    await agent.start()
    await agent.scale(ART, "gate", 3)
    first = agent.instances_of(ART.name)[0]
    assert await agent.stop_version(ART.name, reason="test", instance=first.id) == 0
    assert first.id not in _ready(agent) and len(_ready(agent)) == 2
    assert await agent.stop_version(ART.name, reason="test") == 0
    assert agent.instances_of(ART.name) == [] and all(h.stops == 1 for h in runtime.handles)
    assert agent.replicas(ART.name) == 1  # stopped: the next start is one instance unless asked
    await agent.close()


async def test_the_remote_agent_mirrors_every_replica(tmp_path: Path) -> None:
    registry = await open_registry(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    runtime = GateRuntime()
    agent = make_agent(registry, runtime, drain_timeout=5)
    server = AgentServer(agent, tmp_path / "agent.sock")
    await agent.start()
    await server.start()
    remote = RemoteAgent(tmp_path / "agent.sock", {}, node="test", load_timeout=10)
    await remote.start()
    try:
        first = await remote.ensure(ART, "gate", replicas=2)
        await wait_until(lambda: len(_ready(remote)) == 2, what="both replicas in the mirror")
        assert set(_ready(remote)) == set(_ready(agent)) and first.id in _ready(remote)
        assert remote.replicas(ART.name) == 2
        a, b = remote.instances_of(ART.name)
        remote.acquire(a.id)
        assert remote.instance_for(ART.name) is b  # the least loaded, by this process's counts
        await wait_until(lambda: agent.in_flight(a.id) == 1, what="the count in the agent")

        runtime.handles[0].crash()  # a replica crashes: the agent replaces it, the mirror follows
        await wait_until(lambda: runtime.starts == 3, what="the replacement")
        await wait_until(
            lambda: len(_ready(remote)) == 2 and runtime.handles[0].instance_id not in _ready(remote),
            what="the mirror with the replacement",
        )
        remote.release(a.id)
        await _settled(agent)

        kept = await remote.scale(ART, "gate", 1)  # through the agent process: the surplus drains
        assert len(kept) == 1
        await wait_until(lambda: _ready(remote) == [kept[0].id], what="one replica left in the mirror")
        with pytest.raises(Conflict, match="memory does not allow"):
            agent.available_memory = lambda: 0
            await remote.scale(ART, "gate", 2)
    finally:
        await remote.close()
        await server.close()
        await agent.close()
        await registry.close()


def test_target_specs_say_their_replicas() -> None:
    from superollama.cli.deployments import _with_replicas
    from superollama.control import parse_targets
    from superollama.core.routing import DeploymentTarget

    assert parse_targets(["a:1=90x2", "b:1=10", "c:1"]) == [
        DeploymentTarget("a:1", 90, replicas=2),
        DeploymentTarget("b:1", 10),
        DeploymentTarget("c:1", 100),
    ]
    assert parse_targets(["b:1=10"], replicas=3) == [DeploymentTarget("b:1", 10, replicas=3)]
    with pytest.raises(Exception, match="optionally followed by 'xN' replicas"):
        parse_targets(["a:1=90xtwo"])
    # the CLI's --replicas N: for the targets that do not say theirs
    assert _with_replicas(("a:1=90", "b:1=10x3", "c:1"), 2) == ["a:1=90x2", "b:1=10x3", "c:1=100x2"]
    assert _with_replicas(("a:1=90",), None) == ["a:1=90"]
