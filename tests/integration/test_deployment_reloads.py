"""The deployment manager's reloads against its own changes (a SQLite file and a fresh Postgres schema).

The change feed reloads the deployments and the versions scaled by themselves whenever the registry
moves, while this gateway's own changes reload them too. A CI run once saw ``scale VERSION --replicas 2``
with no placement write an empty one over the version's ``--labels zone=b``: a feed reload had emptied
the copy that ``scale`` read and was still reading the registry. These tests hold a reload inside its
registry read and check what the others see meanwhile: the whole last state, never a half-loaded or an
older one, and a failed scale puts back the registry's row, not the copy's.
"""

from __future__ import annotations

import asyncio
import builtins
from pathlib import Path

import pytest
from tests.integration.test_registry import version

from superollama.control.controller import Controller
from superollama.control.deployments import DeploymentManager
from superollama.control.swap import Swapper
from superollama.core.deployments import VersionScale
from superollama.core.placement import PlacementConstraint
from superollama.core.routing import RoutingHolder
from superollama.errors import ModelLoadFailed
from superollama.registry import Registry
from superollama.registry._deployments import VersionScaleRepository
from superollama.store import ModelStore

ZONE_B = PlacementConstraint.of(device="cpu", labels={"zone": "b"})


class HeldLists:
    """The registry's version scales, whose ``list`` can be held after it has read (a reload caught
    between its read and putting what it read in place)."""

    def __init__(self, inner: VersionScaleRepository) -> None:
        self._inner = inner
        self.hold: asyncio.Event | None = None
        self.reading = asyncio.Event()  # set once a held list has read

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def list(self) -> builtins.list[VersionScale]:
        rows = await self._inner.list()
        hold, self.hold = self.hold, None
        if hold is not None:
            self.reading.set()
            await hold.wait()
        return rows


class WatchedLock(asyncio.Lock):
    """The manager's reload lock, telling when a reload has to wait for another (``queued``)."""

    def __init__(self) -> None:
        super().__init__()
        self.queued = asyncio.Event()

    async def acquire(self) -> bool:
        if self.locked():
            self.queued.set()
        return await super().acquire()


async def first_of(task: asyncio.Task[object], event: asyncio.Event) -> None:
    """Wait until ``task`` ends or ``event`` is set, whichever comes first (30 s at most)."""
    waiter = asyncio.create_task(event.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    assert done, "neither the task ended nor the event came"


@pytest.fixture
async def manager(registry: Registry, tmp_path: Path) -> DeploymentManager:
    await registry.versions.add(version("a:1"))
    controller = Controller(registry, ModelStore(tmp_path / "models"), RoutingHolder())  # no node agent
    await controller.start()
    deployments = DeploymentManager(controller, Swapper(controller))
    deployments._reloading = WatchedLock()
    await deployments.start()
    return deployments


def _watched(manager: DeploymentManager) -> WatchedLock:
    lock = manager._reloading
    assert isinstance(lock, WatchedLock)
    return lock


def _held(registry: Registry) -> tuple[HeldLists, asyncio.Event]:
    lists = HeldLists(registry.version_scales)
    registry.version_scales = lists  # type: ignore[assignment]
    lists.hold = asyncio.Event()
    return lists, lists.hold


async def _reloading_zone_b(
    registry: Registry, manager: DeploymentManager
) -> tuple[asyncio.Task[None], asyncio.Event]:
    """a:1 scaled to 2 on zone b and reloaded; then a reload held between its read and putting it in
    place (set the event to let it end)."""
    await registry.version_scales.put(VersionScale("a:1", 2, ZONE_B))
    await manager.refresh()
    lists, hold = _held(registry)
    reload = asyncio.create_task(manager.refresh())
    await lists.reading.wait()
    return reload, hold


async def test_a_reload_in_progress_shows_the_last_whole_state(
    registry: Registry, manager: DeploymentManager
) -> None:
    reload, hold = await _reloading_zone_b(registry, manager)
    shown = manager.versions.show("a:1")  # what ``scale`` and ``show`` answer meanwhile
    assert (shown["replicas"], shown["placement"]) == (2, ZONE_B.as_json())
    hold.set()
    await reload
    assert manager.scale_of("a:1") == await registry.version_scales.find("a:1")


async def test_an_older_reload_never_replaces_a_newer_one(
    registry: Registry, manager: DeploymentManager
) -> None:
    lists, hold = _held(registry)
    older = asyncio.create_task(manager.refresh())  # reads before the change below
    await lists.reading.wait()
    await registry.version_scales.put(VersionScale("a:1", 3, ZONE_B))
    newer = asyncio.create_task(manager.refresh())  # reads after it
    # the newer one as far as it goes before the older one ends: to its end, or queued behind it
    await first_of(newer, _watched(manager).queued)
    hold.set()
    await asyncio.gather(older, newer)
    kept = manager.scale_of("a:1")
    assert kept is not None and (kept.replicas, kept.placement) == (3, ZONE_B)


async def test_a_failed_scale_puts_back_the_registrys_row_not_a_reloading_copy(
    registry: Registry, manager: DeploymentManager
) -> None:
    reload, hold = await _reloading_zone_b(registry, manager)
    # no placement given: the one it had; this process runs no node agent, so the start fails
    scale = asyncio.create_task(manager.versions.scale("a:1", 3))
    # the scale as far as it goes while the held reload is in progress: to its end, or its own reload
    # queued behind the held one
    await first_of(scale, _watched(manager).queued)
    hold.set()
    with pytest.raises(ModelLoadFailed):
        await scale
    await reload
    row = await registry.version_scales.find("a:1")
    assert row is not None and (row.replicas, row.placement) == (2, ZONE_B)
    await manager.refresh()
    assert manager.versions.show("a:1")["placement"] == ZONE_B.as_json()
