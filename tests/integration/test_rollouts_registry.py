"""The registry's parts of rollouts and shadow traffic, on SQLite and Postgres: a rollout's state (what a
restarted control plane reads back), the per-target windows every gateway process reports and the
leader sums, and shadow comparisons with their aggregates and pruning."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from tests.integration.test_registry import Clock

from superollama.core.canary import CanaryPolicy, TargetWindow, WindowStats
from superollama.core.deployments import RolloutRecord, ShadowSample
from superollama.errors import NotFound
from superollama.registry import Registry, open_registry
from superollama.registry._rollouts import ShadowRepository


@pytest.fixture
async def registry(db_url: str) -> AsyncIterator[tuple[Registry, Clock]]:
    clock = Clock()
    reg = await open_registry(db_url, clock=clock)
    try:
        yield reg, clock
    finally:
        await reg.close()


def window(latencies: list[float], errors: int = 0) -> WindowStats:
    w = TargetWindow(60)
    for i, latency in enumerate(latencies):
        w.record(1.0, latency, i < errors)
    return w.stats(1.0)


async def test_a_rollout_is_saved_found_and_listed_while_running(registry: tuple[Registry, Clock]) -> None:
    reg, _ = registry
    with pytest.raises(NotFound, match="has no rollout"):
        await reg.rollouts.get("chat", "production")
    policy = CanaryPolicy(canary=10, step=30, every=1.5, max_p95=0.5, relative=False, min_samples=3)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    decision = {"at": at.isoformat(), "action": "start", "weight": 10, "reason": "r", "actor": "cli"}
    saved = await reg.rollouts.put(
        RolloutRecord("chat", "staging", "running", "a:1", "b:1", 10, policy, (decision,), at)
    )
    assert saved.client_name == "chat@staging" and saved.policy == policy and saved.decisions == (decision,)
    assert saved.next_at == at and saved.started_at is not None
    assert [r.client_name for r in await reg.rollouts.running()] == ["chat@staging"]
    moved = await reg.rollouts.put(replace(saved, weight=40, next_at=at + timedelta(seconds=2)))
    assert moved.weight == 40 and moved.started_at == saved.started_at
    await reg.rollouts.put(replace(moved, state="promoted"))
    assert await reg.rollouts.running() == []
    assert (await reg.rollouts.get("chat", "staging")).state == "promoted"
    await reg.rollouts.delete("chat", "staging")
    assert await reg.rollouts.find("chat", "staging") is None


async def test_windows_of_every_gateway_are_summed_while_fresh(registry: tuple[Registry, Clock]) -> None:
    reg, clock = registry
    await reg.windows.report(
        "gw-1", [("chat", "a", window([0.01] * 10), 0), ("chat", "b", window([0.2] * 4, 2), 3)]
    )
    await reg.windows.report("gw-2", [("chat", "b", window([0.4] * 6), 1), ("other", "a", window([0.01]), 0)])
    got = await reg.windows.collect("chat", fresh=5)
    assert set(got) == {"a", "b"}
    b, dropped, reporters = got["b"]
    assert (b.count, b.errors, dropped, reporters) == (10, 2, 4, 2)
    assert b.p95 is not None and b.p95 > 0.35  # the p95 of both gateways' requests together
    clock.tick(3)
    await reg.windows.report("gw-1", [("chat", "b", window([0.2] * 5), 3)])  # overwrites gw-1's row
    clock.tick(3)
    b, _, reporters = (await reg.windows.collect("chat", fresh=5))["b"]
    assert (b.count, reporters) == (5, 1)  # gw-2 stopped reporting 6 s ago: not counted
    assert await reg.windows.prune(older_than=5) == 3
    assert set(await reg.windows.collect("chat", fresh=60)) == {"b"}


async def test_shadow_comparisons_aggregate_and_keep_the_newest(registry: tuple[Registry, Clock]) -> None:
    reg, _ = registry
    empty = await reg.shadows.summary("chat")
    assert empty["samples"] == 0 and empty["exact_match_rate"] is None and empty["last"] == []

    def sample(i: int, *, error: str | None = None) -> ShadowSample:
        return ShadowSample(
            "chat",
            "b",
            "a",
            0.1,
            None if error else 0.3,
            10,
            None if error else 10 + i,
            i % 2 == 0,
            error=error,
        )

    await reg.shadows.add([sample(0), sample(1), sample(2, error="HTTP 500")])
    got = await reg.shadows.summary("chat", last=2)
    assert (got["samples"], got["failed"]) == (3, 1)
    assert got["exact_match_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert got["primary_latency_ms"] == 100.0 and got["shadow_latency_ms"] == 300.0
    assert got["shadow_length"] == 10.5
    assert [s["error"] for s in got["last"]] == ["HTTP 500", None]
    small = ShadowRepository(reg.shadows._db, keep=2)  # the same database, keeping 2 per deployment
    await small.add([sample(7)])
    kept = await reg.shadows.list("chat", last=10)
    assert [s.shadow_length for s in kept] == [17, None]  # only the newest 2 stay
