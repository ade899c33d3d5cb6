"""Placement constraints in the registry (a SQLite file and a fresh Postgres schema): a deployment target's
``placement`` survives a reopen (a restart) and its history, and a version scaled by itself
(``version_placements``, migration 18) is written, read, replaced and forgotten."""

from __future__ import annotations

from sqlalchemy import inspect

from superollama.core.deployments import DeploymentRecord, VersionScale
from superollama.core.placement import PlacementConstraint
from superollama.core.routing import DeploymentTarget
from superollama.registry import open_registry

ON_BETA = PlacementConstraint.of(device="gpu", node="beta", labels={"zone": "b", "gpu": "a100"}, spread=True)


async def test_a_targets_placement_survives_a_restart_and_goes_to_history(db_url: str) -> None:
    reg = await open_registry(db_url)
    try:
        first = (DeploymentTarget("a:1", 100, replicas=2, placement=ON_BETA),)
        await reg.deployments.put(DeploymentRecord("chat", targets=first))
        await reg.deployments.put(DeploymentRecord("chat", targets=(DeploymentTarget("a:1", 100),)))
    finally:
        await reg.close()
    reg = await open_registry(db_url)  # what a restarted server reads
    try:
        current = await reg.deployments.get("chat")
        assert current.targets[0].placement.empty
        [before] = await reg.deployments.history("chat")
        assert before.targets == first and before.targets[0].placement == ON_BETA
        back = await reg.deployments.rollback("chat")
        assert back.targets[0].placement == ON_BETA
        assert back.as_json()["targets"][0]["placement"] == {
            "device": "gpu",
            "node": "beta",
            "labels": {"gpu": "a100", "zone": "b"},
            "spread": True,
        }
    finally:
        await reg.close()


async def test_version_scales_round_trip(db_url: str) -> None:
    reg = await open_registry(db_url)
    try:
        assert await reg.version_scales.list() == []
        saved = await reg.version_scales.put(VersionScale("a:1", 3, ON_BETA))
        assert saved is not None and (saved.replicas, saved.placement) == (3, ON_BETA)
        assert saved.updated_at is not None
        await reg.version_scales.put(VersionScale("b:1", 2))
        changed = await reg.version_scales.put(VersionScale("a:1", 2, PlacementConstraint.of(device="cpu")))
        assert changed is not None and changed.placement.device == "cpu"
    finally:
        await reg.close()
    reg = await open_registry(db_url)
    try:
        listed = await reg.version_scales.list()
        assert [(s.version, s.replicas, s.placement) for s in listed] == [
            ("a:1", 2, PlacementConstraint.of(device="cpu")),
            ("b:1", 2, PlacementConstraint()),
        ]
        # one instance anywhere is the default: no row is kept for it
        assert await reg.version_scales.put(VersionScale("b:1", 1)) is None
        assert await reg.version_scales.find("b:1") is None
        assert await reg.version_scales.delete("a:1") is True
        assert await reg.version_scales.list() == []
    finally:
        await reg.close()


async def test_migration_18_made_the_table(db_url: str) -> None:
    reg = await open_registry(db_url)
    try:
        async with reg.engine.connect() as conn:
            names = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert "version_placements" in names
    finally:
        await reg.close()
