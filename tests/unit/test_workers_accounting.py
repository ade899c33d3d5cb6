"""The primary's accounting of replica requests (``PrimaryHub``), on a real agent with a runtime double:
replicas' in-flight counts keep an instance from unloading, a snapshot that removes an instance fences it
until each replica acknowledged it, a replica that goes away gives its counts back, and ``keep_alive: 0``
from a replica unloads after its last request."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.unit.test_agent import ART, Clock, GateRuntime, make_agent
from tests.waiting import wait_until

from superollama.agent import LocalAgent
from superollama.control import (
    CredentialStore,
    LocalControlPlane,
    Route,
    RouteTarget,
    RoutingHolder,
    RoutingTable,
)
from superollama.core import InstanceState
from superollama.registry import Registry, open_registry
from superollama.workers.activity import ActivityLedger
from superollama.workers.primary import PrimaryHub, _Replica


class FakeSocket:
    """The hub's side of a replica's watch WebSocket: what it sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(orjson.loads(data))

    async def close(self) -> None:
        pass

    def states(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["op"] == "state"]


@pytest.fixture
async def registry(tmp_path: Path) -> Registry:
    reg = await open_registry(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    yield reg  # type: ignore[misc]
    await reg.close()


async def setup(registry: Registry, clock: Clock | None = None) -> tuple[LocalAgent, GateRuntime, PrimaryHub]:
    runtime = GateRuntime()
    agent = make_agent(registry, runtime, clock, keep_alive=300, drain_timeout=30)
    holder = RoutingHolder()
    generations = itertools.count(1)

    def republish() -> None:  # what the controller does on every agent change
        targets = tuple(RouteTarget(i.id, i.handle.endpoint) for i in agent.instances() if i.state == "ready")
        holder.publish(RoutingTable.build([Route("m:1", "m:1", True, 0, targets)], next(generations)))

    agent.subscribe(republish)
    await agent.start()
    republish()
    plane = LocalControlPlane(None, agent, holder, CredentialStore())  # type: ignore[arg-type]  # no controller
    hub = PrimaryHub(None, plane, None, None)  # type: ignore[arg-type]
    return agent, runtime, hub


async def removal_sent(ws: FakeSocket) -> dict[str, Any]:
    """The snapshot that takes the instance away from the replica, once the hub has sent it (the fence is
    tied to it from then on)."""

    def sent() -> dict[str, Any] | None:
        return next((s for s in ws.states() if "table" in s and not s["table"]["routes"][0]["targets"]), None)

    return await wait_until(sent, what="the snapshot without the instance, sent to the replica")


def connect(hub: PrimaryHub, index: int = 1) -> tuple[_Replica, FakeSocket]:
    ws = FakeSocket()
    replica = _Replica(index, 1000 + index, ws, ActivityLedger(hub._agent))  # type: ignore[arg-type]
    hub._replicas.add(replica)
    return replica, ws


async def test_an_unload_waits_for_the_replicas_requests(registry: Registry) -> None:
    agent, runtime, hub = await setup(registry)
    inst = await agent.ensure(ART, "gate")
    replica, ws = connect(hub)
    hub._received(replica, {"op": "activity", "in_flight": {inst.id: 1}, "used": [inst.id]})
    assert agent.in_flight(inst.id) == 1

    unload = asyncio.create_task(agent.unload("m:1", reason="test"))
    state = await removal_sent(ws)  # the replica is told to stop picking it
    assert inst.state is InstanceState.DRAINING and not inst.idle.is_set()  # the unload waits on idle
    assert not unload.done()
    assert agent.in_flight(inst.id) == 2  # the replica's request, and the fence until it has the snapshot

    hub._received(replica, {"op": "ack", "seq": state["seq"], "in_flight": {inst.id: 1}})
    assert agent.in_flight(inst.id) == 1 and not inst.idle.is_set()  # fence gone, its request running
    assert not unload.done()
    hub._received(replica, {"op": "activity", "in_flight": {}})
    assert await asyncio.wait_for(unload, 5) is True
    assert runtime.handles[0].stops == 1
    await agent.close()


async def test_a_removed_instance_is_fenced_even_before_a_replica_reported_it(registry: Registry) -> None:
    """A replica may have picked the instance a moment ago and not reported it yet: the unload waits for
    the replica's acknowledgment, which carries its counts."""
    agent, _, hub = await setup(registry)
    inst = await agent.ensure(ART, "gate")
    replica, ws = connect(hub)
    unload = asyncio.create_task(agent.unload("m:1", reason="test"))
    state = await removal_sent(ws)
    assert inst.state is InstanceState.DRAINING and not inst.idle.is_set()  # the unload waits on idle
    assert not unload.done() and agent.in_flight(inst.id) == 1
    hub._received(replica, {"op": "ack", "seq": state["seq"], "in_flight": {inst.id: 1}})
    assert agent.in_flight(inst.id) == 1 and not inst.idle.is_set()  # the request it reported now holds it
    assert not unload.done()
    hub._received(replica, {"op": "activity", "in_flight": {}})
    assert await asyncio.wait_for(unload, 5) is True
    await agent.close()


async def test_a_replica_that_goes_away_gives_everything_back(registry: Registry) -> None:
    agent, _, hub = await setup(registry)
    inst = await agent.ensure(ART, "gate")
    replica, _ = connect(hub)
    hub._received(replica, {"op": "activity", "in_flight": {inst.id: 3}})
    other, _ = connect(hub, 2)
    hub._received(other, {"op": "activity", "in_flight": {inst.id: 1}})
    assert agent.in_flight(inst.id) == 4
    hub._replicas.discard(replica)
    hub._gone(replica)
    assert agent.in_flight(inst.id) == 1
    await agent.close()


async def test_use_and_keep_alive_from_a_replica(registry: Registry) -> None:
    clock = Clock()
    agent, runtime, hub = await setup(registry, clock)
    inst = await agent.ensure(ART, "gate")
    replica, ws = connect(hub)
    clock.now += 100
    hub._received(replica, {"op": "activity", "in_flight": {}, "used": [inst.id]})  # came and went
    assert inst.last_used == clock.now and agent.in_flight(inst.id) == 0
    hub._received(replica, {"op": "activity", "in_flight": {inst.id: 1}, "keep_alive": {"m:1": 0}})
    await clock.passes()  # the idle reaper looked at it since: keep_alive 0, but in use
    assert runtime.handles[0].stops == 0 and inst.state is InstanceState.READY
    hub._received(replica, {"op": "activity", "in_flight": {}})
    state = await removal_sent(ws)  # keep_alive 0: the unload starts, and waits for the replica's ack
    assert inst.state is InstanceState.DRAINING and not inst.idle.is_set()
    assert runtime.handles[0].stops == 0
    hub._received(replica, {"op": "ack", "seq": state["seq"], "in_flight": {}})
    await wait_until(lambda: runtime.handles[0].stops, what="the unload after the replica's last request")
    assert runtime.handles[0].stops == 1
    await agent.close()
