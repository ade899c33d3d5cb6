"""A cordon of the control plane's own node, on one machine and in a cluster.

On one machine it stops every new start (the node is the only one). In a cluster the control plane's node
is one node among others: its cordon must not refuse a start that placement puts on another node (found
by ``tests/cluster/test_two_hosts.py``, where the control plane's node is cordoned so that the model runs
on the other host). Ray itself is not needed here: the start on a node is the double's."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.unit.test_agent import ART, GateRuntime, make_agent

from superollama.agent import AgentConfig
from superollama.cluster.agent import RayAgent
from superollama.core import InstanceHandle, InstanceSpec, NodeRecord, Runtime
from superollama.errors import Unavailable
from superollama.registry import Registry, open_registry


@pytest.fixture
async def registry(tmp_path: Path) -> Registry:
    reg = await open_registry(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    await reg.nodes.upsert(NodeRecord(name="local", address="127.0.0.1", state="cordoned"))
    yield reg  # type: ignore[misc]
    await reg.close()


class PlacedElsewhere(RayAgent):
    """The cluster agent with its start on a node replaced: the instance runs on node ``far``."""

    async def start_instance(self, runtime: Runtime, spec: InstanceSpec) -> InstanceHandle:
        return await runtime.start(spec)


async def test_one_machine_with_its_node_cordoned_starts_nothing(registry: Registry) -> None:
    agent = make_agent(registry, GateRuntime())
    with pytest.raises(Unavailable, match="node 'local' is cordoned"):
        await agent.ensure(ART, "gate")


async def test_a_cluster_with_the_control_planes_node_cordoned_still_starts_elsewhere(
    registry: Registry,
) -> None:
    runtime = GateRuntime()
    agent = PlacedElsewhere(registry, {"gate": runtime}, AgentConfig(reap_interval=0.01), address="")
    inst = await agent.ensure(ART, "gate")
    assert inst.version == ART.name and runtime.starts == 1
