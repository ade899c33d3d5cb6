"""Placement constraints set by users (core/placement.py, control/placement.py, agent/placement.py's
``request_for``, the local agent): parsed with errors naming the parameter, merged per version, carried by
the deployment targets' JSON and the routing snapshot, and handed to EVERY start of the version's
instances (first, added replicas, a crash's replacement) — checked against this node on one machine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from tests.unit.test_agent import ART, GateRuntime, make_agent
from tests.waiting import wait_until

from superollama.agent.estimate import MemoryEstimate
from superollama.agent.placement import DeviceView, DoesNotFit, NodeView, place, request_for
from superollama.cluster.replace import admits
from superollama.control.placement import conflicting, parse_label_text, parse_placement, wanted
from superollama.core import InstanceHandle, InstanceSpec, InstanceState, NodeRecord
from superollama.core.deployments import VersionScale, targets_from_json, targets_json
from superollama.core.placement import PlacementConstraint
from superollama.core.routing import Deployment, DeploymentTarget, Route, RoutingTable
from superollama.errors import Conflict, InvalidRequest
from superollama.registry import Registry, open_registry
from superollama.workers.snapshot import decode_table, table_json

GIB = 1024**3
NEED = {
    "cpu": MemoryEstimate(1 * GIB, 0, 0, 0, basis="t"),
    "cuda": MemoryEstimate(1 * GIB, 0, 0, 0, basis="t"),
}
BETA = PlacementConstraint.of(node="beta", labels={"zone": "b"}, spread=True, device="gpu")


# -- parsing: a 400 that names the parameter ------------------------------------------------------------
def test_parse_placement_accepts_objects_and_the_cli_label_text() -> None:
    got = parse_placement({"device": "gpu", "node": "beta", "labels": "zone=b, gpu=a100", "spread": True})
    assert got == PlacementConstraint.of(
        device="gpu", node="beta", labels={"gpu": "a100", "zone": "b"}, spread=True
    )
    assert got.labels == (("gpu", "a100"), ("zone", "b"))  # sorted: equal however written
    assert parse_placement({"labels": {"zone": "b", "gpu": "a100"}}).labels == got.labels
    assert parse_placement(None).empty and parse_placement({}).empty
    assert parse_placement({"device": "any"}).empty  # any is no constraint
    assert parse_label_text("") == {}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"device": "tpu"}, "device", "one of cpu, gpu, any"),
        ({"node": "a b"}, "node", "a node's name"),
        ({"node": 3}, "node", "a node's name"),
        ({"labels": "zone"}, "labels", "key=value"),
        ({"labels": "zone=b c"}, "labels", "letters, digits"),
        ({"labels": {"zone": 1}}, "labels", "letters, digits"),
        ({"labels": ["zone=b"]}, "labels", "an object"),
        ({"spread": "yes"}, "spread", "true or false"),
        ({"gpu": True}, "placement", "unknown field"),
        ("gpu", "placement", "must be an object"),
    ],
)
def test_parse_placement_refuses_with_the_parameter_named(body: object, param: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words) as caught:
        parse_placement(body)
    assert caught.value.param == param and caught.value.status == 400


# -- the value: JSON round trips (registry rows, routing snapshot) ---------------------------------------
def test_targets_json_round_trip_keeps_placement_and_omits_an_empty_one() -> None:
    targets = (DeploymentTarget("a:1", 90, replicas=2, placement=BETA), DeploymentTarget("b:1", 10))
    data = targets_json(targets)
    assert data[0]["placement"] == {"device": "gpu", "node": "beta", "labels": {"zone": "b"}, "spread": True}
    assert data[1]["placement"] is None
    assert targets_from_json(orjson.loads(orjson.dumps(data))) == targets
    # a row written before placements existed reads as no constraint
    assert targets_from_json([{"name": "a:1", "weight": 1}])[0].placement.empty


def test_the_routing_snapshot_carries_placement_to_replicas() -> None:
    dep = Deployment("chat", (DeploymentTarget("a:1", 100, placement=BETA),))
    table = RoutingTable.build([Route("a:1", "a:1", True, 0)], 3, [dep])
    back = decode_table(orjson.loads(orjson.dumps(table_json(table))))
    assert back.deployments["chat"].targets[0].placement == BETA


# -- merging per version: one pool, one constraint -------------------------------------------------------
def test_wanted_takes_the_versions_own_scale_over_its_deployments() -> None:
    zone_a = PlacementConstraint.of(labels={"zone": "a"})
    deps = [
        Deployment("b-chat", (DeploymentTarget("a:1", 100, replicas=3, placement=zone_a),)),
        Deployment(
            "a-chat", (DeploymentTarget("a:1", 100, placement=BETA), DeploymentTarget("c:1", 0, replicas=5))
        ),
    ]
    replicas, placements = wanted(deps, [])
    assert replicas == {"a:1": 3} and placements == {"a:1": BETA}  # first by name; weight 0 asks nothing
    replicas, placements = wanted(deps, [VersionScale("a:1", 4, zone_a), VersionScale("d:1", 2)])
    assert replicas == {"a:1": 4, "d:1": 2} and placements == {"a:1": zone_a}


def test_a_second_source_asking_another_placement_of_the_same_version_is_a_409() -> None:
    deps = [Deployment("chat", (DeploymentTarget("a:1", 100, placement=BETA),))]
    with pytest.raises(Conflict, match="runs under deployment 'chat' with placement device=gpu node=beta"):
        conflicting("a:1", PlacementConstraint.of(device="cpu"), deps, [])
    conflicting("a:1", BETA, deps, [])  # the same: fine
    conflicting("a:1", PlacementConstraint(), deps, [])  # none: takes the pool as it is
    conflicting("a:1", PlacementConstraint.of(device="cpu"), deps, [], but="chat")  # its own stage
    with pytest.raises(Conflict, match="is scaled with placement device=gpu"):
        conflicting("a:1", PlacementConstraint.of(device="cpu"), [], [VersionScale("a:1", 2, BETA)])


# -- what placement is asked ---------------------------------------------------------------------------
def test_request_for_reads_the_constraint_and_a_moves_pin_wins() -> None:
    got = request_for("a:1", "llamacpp", {"placement": BETA}, policy="binpack")
    assert (got.device, got.node, dict(got.labels), got.policy) == ("gpu", "beta", {"zone": "b"}, "spread")
    moved = request_for("a:1", "llamacpp", {"placement": BETA, "node": "alpha"})
    assert moved.node == "alpha"
    plain = request_for("a:1", "llamacpp", {}, policy="spread")
    assert (plain.device, plain.node, dict(plain.labels), plain.policy) == ("any", None, {}, "spread")


def _node(name: str, free: float, **kw: object) -> NodeView:
    devices = (DeviceView("cpu", 64 * GIB, int(free * GIB)),)
    return NodeView(name=name, devices=devices, runtimes=frozenset({"llamacpp"}), **kw)  # type: ignore[arg-type]


def test_spread_counts_the_versions_own_replicas_before_all_of_ours() -> None:
    # alpha runs more of our instances, but none of this version; beta runs one of it already
    nodes = [_node("alpha", 10, instances=3), _node("beta", 30, instances=1, version_instances=1)]
    spread = request_for("a:1", "llamacpp", {"placement": PlacementConstraint.of(spread=True)})
    assert place(nodes, spread, NEED).node == "alpha"
    binpack = request_for("a:1", "llamacpp", {})
    assert place(nodes, binpack, NEED).node == "alpha"  # the tightest
    both = [_node("alpha", 10, version_instances=1), _node("beta", 30, version_instances=1)]
    assert place(both, spread, NEED).node == "beta"  # a tie on replicas: the most free memory


def test_labels_and_pins_filter_with_a_message_that_says_why() -> None:
    nodes = [_node("alpha", 10, labels={"zone": "a"}), _node("beta", 10, labels={"zone": "b"}, cordoned=True)]
    zone_b = request_for("a:1", "llamacpp", {"placement": PlacementConstraint.of(labels={"zone": "b"})})
    with pytest.raises(DoesNotFit, match="alpha lacks labels zone=b; beta is cordoned"):
        place(nodes, zone_b, NEED)
    pinned = request_for("a:1", "llamacpp", {"placement": PlacementConstraint.of(node="gamma")})
    with pytest.raises(DoesNotFit, match="node 'gamma' is not in the cluster"):
        place(nodes, pinned, NEED)


def test_a_running_instance_is_misplaced_only_by_node_labels_or_device() -> None:
    beta = _node("beta", 10, labels={"zone": "b"})
    assert admits(PlacementConstraint.of(labels={"zone": "b"}, spread=True), beta, "cpu")
    assert not admits(PlacementConstraint.of(labels={"zone": "a"}), beta, "cpu")
    assert not admits(PlacementConstraint.of(node="alpha"), beta, "cpu")
    assert not admits(PlacementConstraint.of(device="gpu"), beta, "cpu")
    assert admits(PlacementConstraint.of(device="gpu"), beta, "cuda:1")
    assert not admits(PlacementConstraint.of(device="cpu"), beta, "cuda:0")
    assert not admits(PlacementConstraint(), None, "cpu")  # its node is gone


# -- the local agent: every start carries it, this node is checked --------------------------------------
class SpecRuntime(GateRuntime):
    """The gated runtime that keeps every ``InstanceSpec`` it was asked to start."""

    def __init__(self) -> None:
        super().__init__()
        self.specs: list[InstanceSpec] = []

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        self.specs.append(spec)
        return await super().start(spec)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await open_registry(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    yield reg
    await reg.close()


async def _label_local(registry: Registry, **labels: str) -> None:
    node = await registry.nodes.get("local")
    inventory = {**node.inventory, "labels": labels}
    await registry.nodes.upsert(NodeRecord(node.name, node.address, node.state, inventory))


async def test_every_start_of_the_version_carries_its_placement(registry: Registry) -> None:
    runtime = SpecRuntime()
    agent = make_agent(registry, runtime)
    await agent.start()
    await _label_local(registry, zone="b")
    wanted_here = PlacementConstraint.of(node="local", labels={"zone": "b"}, spread=True)
    await agent.ensure(ART, "gate", replicas=2, placement=wanted_here)
    await wait_until(lambda: runtime.starts == 2, what="the second replica")
    runtime.handles[0].crash()  # its replacement is placed the same way
    await wait_until(lambda: runtime.starts == 3, what="the crashed replica's replacement")
    await agent.scale(ART, "gate", 3)  # an added replica: the constraint is remembered
    assert runtime.starts == 4
    assert [s.options.get("placement") for s in runtime.specs] == [wanted_here] * 4
    await agent.close()


async def test_one_machine_checks_the_constraint_against_its_own_node(registry: Registry) -> None:
    runtime = SpecRuntime()
    agent = make_agent(registry, runtime)
    await agent.start()
    with pytest.raises(DoesNotFit, match=r"'m:1' needs a GPU; none on the eligible nodes \(local\)") as gpu:
        await agent.ensure(ART, "gate", placement=PlacementConstraint.of(device="gpu"))
    assert gpu.value.status == 503
    with pytest.raises(DoesNotFit, match="local lacks labels zone=b"):
        await agent.ensure(ART, "gate", placement=PlacementConstraint.of(labels={"zone": "b"}))
    with pytest.raises(DoesNotFit, match="node 'beta' is not in the cluster"):
        await agent.scale(ART, "gate", 2, placement=PlacementConstraint.of(node="beta"))
    assert runtime.starts == 0  # refused before anything started
    await _label_local(registry, zone="b")
    inst = await agent.ensure(
        ART, "gate", placement=PlacementConstraint.of(labels={"zone": "b"}, device="cpu")
    )
    assert inst.state is InstanceState.READY
    await agent.close()
    # a restarted agent keeps the node's labels (``nodes label`` set them, not its inventory)
    again = make_agent(registry, SpecRuntime())
    await again.start()
    assert (await registry.nodes.get("local")).inventory["labels"] == {"zone": "b"}
    await again.close()
