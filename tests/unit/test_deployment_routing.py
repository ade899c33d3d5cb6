"""The deployment picker on the routing snapshot: weights, stickiness, instances by in-flight count."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest

from superollama.admin.deployments import targets_of
from superollama.control import parse_targets
from superollama.core import Endpoint
from superollama.core.routing import (
    Deployment,
    DeploymentTarget,
    Route,
    RouteTarget,
    RoutingTable,
    pick_instance,
    split_stage,
)
from superollama.errors import InvalidRequest
from superollama.workers.snapshot import decode_table, table_json


def _route(name: str, *instances: str) -> Route:
    ep = Endpoint(f"http://127.0.0.1:1/{name}", "openai", name)
    return Route(name, name, True, 1, tuple(RouteTarget(i, ep) for i in instances))


def _name(route: Route | None) -> str:
    assert route is not None
    return route.name


def _table(sticky: str = "user", *, a: int = 90, b: int = 10) -> RoutingTable:
    routes = [_route("smollm2:135m", "i-a"), _route("gemma3:270m", "i-b")]
    dep = Deployment(
        "chat", (DeploymentTarget("smollm2:135m", a), DeploymentTarget("gemma3:270m", b)), sticky
    )
    return RoutingTable.build(routes, 1, [dep])


def test_sticky_90_10_split_over_2000_users_lands_within_3_percent() -> None:
    dep = _table().deployment("chat")
    assert dep is not None
    picks: Counter[str] = Counter()
    for n in range(2000):
        route = dep.pick(user=f"user-{n}")
        assert route is not None and route.deployment == "chat"
        picks[route.name] += 1
    assert abs(picks["smollm2:135m"] / 2000 - 0.90) <= 0.03, picks
    assert abs(picks["gemma3:270m"] / 2000 - 0.10) <= 0.03, picks


def test_the_same_user_always_gets_the_same_target() -> None:
    dep = _table().deployment("chat")
    assert dep is not None
    for n in range(200):
        first = dep.pick(user=f"user-{n}")
        assert first is not None
        assert all(dep.pick(user=f"user-{n}", rand=random.random) is first for _ in range(5))
    # across snapshots (another process, a rebuilt table) too
    again = _table().deployment("chat")
    assert again is not None
    assert [again.pick(user=f"u{n}").name for n in range(100)] == [
        dep.pick(user=f"u{n}").name for n in range(100)
    ]  # type: ignore[union-attr]


def test_sticky_by_header_or_key_and_random_without_a_value() -> None:
    header = _table("header").deployment("chat")
    key = _table("key").deployment("chat")
    assert header is not None and key is not None
    assert len({_name(header.pick(session="s-1", user=f"u{n}")) for n in range(50)}) == 1
    assert len({_name(key.pick(key="k-1", session=f"s{n}")) for n in range(50)}) == 1
    rng = random.Random(7)
    picks = Counter(_name(header.pick(rand=rng.random)) for _ in range(2000))
    assert abs(picks["smollm2:135m"] / 2000 - 0.90) <= 0.03, picks


def test_zero_weight_missing_and_disabled_targets_get_no_traffic() -> None:
    table = _table("none", a=0, b=5)
    dep = table.deployment("chat")
    assert dep is not None and [c.name for c in dep.choices] == ["gemma3:270m"]
    assert {_name(dep.pick()) for _ in range(20)} == {"gemma3:270m"}
    lonely = RoutingTable.build([], 1, [Deployment("x", (DeploymentTarget("gone:1", 100),))])
    got = lonely.deployment("x")
    assert got is not None and got.pick() is None


def test_stage_names() -> None:
    assert split_stage("chat") == ("chat", "production")
    assert split_stage("chat@staging") == ("chat", "staging")
    staging = Deployment("chat@staging", (DeploymentTarget("gemma3:270m", 1),))
    table = RoutingTable.build([_route("gemma3:270m")], 1, [staging])
    assert table.deployment("chat@staging") is not None
    assert table.deployment("chat") is None and table.deployment("chat@production") is None


def test_power_of_two_choices_prefers_the_instance_with_fewer_in_flight() -> None:
    ep = Endpoint("http://127.0.0.1:1", "openai", "m")
    targets = tuple(RouteTarget(f"i{n}", ep) for n in range(4))
    load = {"i0": 5, "i1": 0, "i2": 3, "i3": 9}
    assert pick_instance(targets[:1], load.__getitem__) is targets[0]
    assert pick_instance(targets[:2], load.__getitem__) is targets[1]
    rng = random.Random(1)
    picks = Counter(
        pick_instance(targets, load.__getitem__, randrange=rng.randrange).instance_id for _ in range(3000)
    )
    assert picks["i3"] == 0  # the busiest never wins a pair
    assert picks["i1"] > picks["i2"] > picks["i0"]  # the idlest wins every pair it is drawn in


def test_deployments_travel_to_replica_workers() -> None:
    table = _table("key")
    decoded = decode_table(orjson.loads(orjson.dumps(table_json(table))))
    dep = decoded.deployment("chat")
    assert dep is not None and dep.sticky == "key" and dep.bounds == (90, 100)
    assert [c.name for c in dep.choices] == ["smollm2:135m", "gemma3:270m"]
    assert dep.choices[0].targets[0].instance_id == "i-a"


def test_target_specs_parse_or_say_what_is_wrong() -> None:
    assert parse_targets(["smollm2:135m=90", "gemma3:270m"]) == [
        DeploymentTarget("smollm2:135m", 90),
        DeploymentTarget("gemma3:270m", 100),
    ]
    with pytest.raises(InvalidRequest, match="must be an integer"):
        parse_targets(["smollm2:135m=ninety"])
    assert targets_of({"targets": [{"name": "a:1", "weight": 5}, "b:1=7"]}) == [
        DeploymentTarget("a:1", 5),
        DeploymentTarget("b:1", 7),
    ]
    for bad in ({}, {"targets": []}, {"targets": [3]}, {"targets": [{"name": "a:1", "weight": "x"}]}):
        with pytest.raises(InvalidRequest):
            targets_of(bad)
