"""``RemoteAgent`` ⇄ ``AgentServer`` over a real Unix socket: the primary worker's view of the agent process.

The agent side is a real ``LocalAgent`` (with the gated fake runtime of ``test_agent``); the client side is
what the controller of ``serve --workers N`` drives. Loads, the mirrored instances, request accounting
folded into the agent's counts, drains, events, and a client that goes away giving its counts back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.unit.test_agent import ART, GateRuntime, make_agent
from tests.waiting import wait_until

from superollama.agent import LocalAgent
from superollama.core import EventRecord, InstanceState
from superollama.errors import ModelLoadFailed
from superollama.registry import open_registry
from superollama.workers.agent_process import AgentServer
from superollama.workers.remote_agent import RemoteAgent


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[LocalAgent, GateRuntime, Path]]:
    registry = await open_registry(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    runtime = GateRuntime()
    agent = make_agent(registry, runtime, keep_alive=300, drain_timeout=5)
    server = AgentServer(agent, tmp_path / "agent.sock")
    await agent.start()
    await server.start()
    try:
        yield agent, runtime, tmp_path / "agent.sock"
    finally:
        await server.close()
        await agent.close()
        await registry.close()


async def test_loads_mirrors_counts_drains_and_reports_events(
    served: tuple[LocalAgent, GateRuntime, Path],
) -> None:
    agent, runtime, path = served
    remote = RemoteAgent(path, {}, node="test", load_timeout=10)
    events: list[EventRecord] = []
    remote.on_event(events.append)
    changes: list[int] = []
    remote.subscribe(lambda: changes.append(1))
    await remote.start()
    try:
        inst = await remote.ensure(ART, "gate")
        local = agent.instance_for(ART.name)
        assert local is not None and (inst.id, inst.pid) == (local.id, local.pid)
        assert inst.handle.endpoint == local.handle.endpoint and inst.state is InstanceState.READY
        assert remote.instances() == [inst] and remote.instance_for(ART.name) is inst
        assert await remote.ensure(ART, "gate") is inst and runtime.starts == 1  # no second load
        await wait_until(lambda: changes, what="the mirror's change reached the subscriber")

        remote.acquire(inst.id)
        remote.acquire(inst.id)
        await wait_until(lambda: agent.in_flight(inst.id) == 2, what="the client's counts in the agent")
        remote.release(inst.id)
        await wait_until(lambda: agent.in_flight(inst.id) == 1, what="a release folded in")
        assert remote.in_flight(inst.id) == 1

        stopping = remote.stop_version(ART.name, reason="test", drain=5)
        remote.release(inst.id)  # the drain waits for it
        assert await stopping == 0
        assert runtime.handles[0].stops == 1
        await wait_until(lambda: remote.instances() == [], what="the stop in the mirror")
        assert await remote.ended(inst.id) == "stopped"
        await wait_until(
            lambda: {"instance.load", "instance.stop"} <= {e.action for e in events},
            what="the agent's events at the client",
        )

        runtime.fail = "no such file"
        with pytest.raises(ModelLoadFailed, match="no such file"):  # the agent's error, same class
            await remote.ensure(ART, "gate")
    finally:
        await remote.close()


async def test_a_client_that_goes_away_gives_its_counts_back_and_instances_run_on(
    served: tuple[LocalAgent, GateRuntime, Path],
) -> None:
    agent, _runtime, path = served
    first = RemoteAgent(path, {}, node="test", load_timeout=10)
    await first.start()
    inst = await first.ensure(ART, "gate")
    first.acquire(inst.id)
    await wait_until(lambda: agent.in_flight(inst.id) == 1, what="the count in the agent")
    await first.close()  # a primary worker killed: its requests are gone with it
    await wait_until(lambda: agent.in_flight(inst.id) == 0, what="the counts given back")
    assert agent.instance_for(ART.name) is not None  # the instance runs on

    second = RemoteAgent(path, {}, node="test", load_timeout=10)  # the restarted primary finds it: no reload
    await second.start()
    try:
        assert [i.id for i in second.instances()] == [inst.id]
        assert second.expires_in(ART.name) is not None
    finally:
        await second.close()


async def test_a_crash_the_agent_reports_leaves_the_mirror_before_the_watch_says_so(
    served: tuple[LocalAgent, GateRuntime, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request that found its instance dead asks ``ended`` and goes straight on to ``ensure``: that must
    load a replacement, not hand back the dead instance the mirror still holds because the watch channel's
    state message has not arrived yet (CI saw a 503 "cannot connect to the backend" from exactly that)."""
    _agent, runtime, path = served
    remote = RemoteAgent(path, {}, node="test", load_timeout=10)
    await remote.start()
    try:
        dead = await remote.ensure(ART, "gate")
        stale = [{"instance_id": dead.id, "endpoint": {"base_url": dead.handle.endpoint.base_url}}]
        monkeypatch.setattr(remote, "_apply", lambda instances: None)  # the watch channel lags
        runtime.handles[0].crash()
        assert await remote.ended(dead.id) == "crashed"
        assert remote.instance_for(ART.name) is None
        fresh = await remote.ensure(ART, "gate")
        assert fresh.id != dead.id and runtime.starts == 2
        monkeypatch.undo()
        remote._apply([{**stale[0], "version": ART.name, "state": "ready"}])  # a message sent before the end
        assert dead.id not in {i.id for i in remote.instances()}
        assert await remote.ensure(ART, "gate") is not dead and runtime.starts == 2  # the agent's fresh one
    finally:
        await remote.close()


async def test_a_cluster_agent_process_tells_its_head_and_token_file_never_the_token(
    served: tuple[LocalAgent, GateRuntime, Path],
) -> None:
    """``serve --cluster --workers N``: the primary learns the Ray head's address and where its token is
    (to answer a join) from the agent process's state; the token itself never crosses the socket."""
    agent, _, path = served
    token = path.parent / "ray-auth-token"
    token.write_text("tok-123\n")
    plain = RemoteAgent(path, {}, node="test", load_timeout=10)
    await plain.start()
    try:  # an agent of one machine: no head, no copies to other nodes
        assert plain.cluster_address is None and plain.ray_token is None and not plain.several_nodes
    finally:
        await plain.close()
    agent.cluster_address = "10.0.0.5:6379"  # type: ignore[attr-defined]  # what a RayAgent carries
    agent.ray_token_file = token  # type: ignore[attr-defined]
    remote = RemoteAgent(path, {}, node="test", load_timeout=10)
    await remote.start()
    try:
        assert remote.cluster_address == "10.0.0.5:6379" and remote.several_nodes
        assert remote.ray_token == "tok-123"
    finally:
        await remote.close()
