"""Jobs: progress anyone can watch, cancellation, failures, and no half state after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from tests.waiting import wait_until

from superollama.control import JobManager
from superollama.control.jobs import Emit
from superollama.core import JobRecord, JobState, Progress
from superollama.errors import Conflict, IntegrityError
from superollama.registry import Registry, open_registry


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await open_registry(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    try:
        yield reg
    finally:
        await reg.close()


def gated(gate: asyncio.Event, fail: Exception | None = None, reached: asyncio.Event | None = None) -> Any:
    """Work that reports 0 %, sets ``reached`` (it is running and parked), waits for ``gate``, then ends."""

    async def work(emit: Emit) -> Mapping[str, Any]:
        emit(Progress("pulling abc", digest="sha256:abc", total=10, completed=0))
        if reached is not None:
            reached.set()
        await gate.wait()
        emit(Progress("pulling abc", digest="sha256:abc", total=10, completed=10))
        if fail is not None:
            raise fail
        return {"model": {"name": "m:1"}}

    return work


async def test_watch_sees_progress_then_success(registry: Registry) -> None:
    jobs = JobManager(registry)
    await jobs.start()
    gate = asyncio.Event()
    job = await jobs.submit("pull", "m:1", gated(gate), actor="cli", params={"source": "file:///x"})
    assert job.state is JobState.RUNNING
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        async for event in jobs.watch(job.id):
            seen.append(event)

    watcher = asyncio.create_task(watch())
    await wait_until(lambda: seen, what="the watcher's first event (it is subscribed)")
    gate.set()
    await asyncio.wait_for(watcher, 5)
    assert seen[0]["completed"] == 0 or seen[0]["status"] == "queued"
    assert seen[-2]["completed"] == 10
    assert seen[-1] == {"status": "success", "job": job.id, "model": {"name": "m:1"}}
    done = await registry.jobs.get(job.id)
    assert done.state is JobState.SUCCEEDED and done.result == {"model": {"name": "m:1"}}
    assert [e.result for e in await registry.events.list(action="job.pull")] == ["ok"]
    # watching an ended job gives its final event at once
    assert [e async for e in jobs.watch(job.id)] == [seen[-1]]
    await jobs.close()


async def test_failure_is_recorded_with_its_reason(registry: Registry) -> None:
    jobs = JobManager(registry)
    gate = asyncio.Event()
    gate.set()
    job = await jobs.submit("pull", "m:1", gated(gate, IntegrityError("sha256 mismatch")))
    done = await jobs.wait(job.id)
    assert done.state is JobState.FAILED and done.error == "sha256 mismatch"
    await jobs.close()


async def test_cancel_stops_the_work(registry: Registry) -> None:
    jobs = JobManager(registry)
    reached = asyncio.Event()
    job = await jobs.submit("pull", "m:1", gated(asyncio.Event(), reached=reached))
    await asyncio.wait_for(reached.wait(), 5)  # the work runs: the cancel has something to stop
    cancelled = await jobs.cancel(job.id)
    assert cancelled.state is JobState.CANCELLED
    with pytest.raises(Conflict):
        await jobs.cancel(job.id)
    await jobs.close()


async def test_a_job_left_running_by_a_dead_server_is_failed_at_start(registry: Registry) -> None:
    await registry.jobs.add(JobRecord(id="job-old", kind="pull", target="m:1"))
    jobs = JobManager(registry)
    await jobs.start()
    old = await registry.jobs.get("job-old")
    assert old.state is JobState.FAILED and "stopped before" in (old.error or "")
    assert [j.id for j in await jobs.list()] == ["job-old"]
    await jobs.close()


async def test_shutdown_cancels_running_jobs(registry: Registry) -> None:
    jobs = JobManager(registry)
    reached = asyncio.Event()
    job = await jobs.submit("pull", "m:1", gated(asyncio.Event(), reached=reached))
    await asyncio.wait_for(reached.wait(), 5)  # the work runs: shutdown has something to cancel
    await jobs.close()
    assert (await registry.jobs.get(job.id)).state is JobState.CANCELLED
    with pytest.raises(Conflict):
        await jobs.submit("pull", "m:2", gated(asyncio.Event()))


async def test_cancel_answers_in_every_state(registry: Registry) -> None:
    """Running here: stopped. Listed as running but run by nobody (its server went away): marked
    cancelled. Ended: a Conflict that says how it ended."""
    jobs = JobManager(registry)
    running = await jobs.submit("pull", "m:1", gated(asyncio.Event()))
    assert (await jobs.cancel(running.id)).state is JobState.CANCELLED

    await registry.jobs.add(JobRecord(id="job-orphan", kind="pull", target="m:2"))
    orphan = await jobs.cancel("job-orphan")
    assert orphan.state is JobState.CANCELLED and "no longer running" in (orphan.error or "")
    assert (await registry.jobs.get("job-orphan")).state is JobState.CANCELLED

    gate = asyncio.Event()
    gate.set()
    failed = await jobs.submit("pull", "m:3", gated(gate, IntegrityError("sha256 mismatch")))
    await jobs.wait(failed.id)
    with pytest.raises(Conflict, match=r"already ended \(failed: sha256 mismatch\)"):
        await jobs.cancel(failed.id)
    await jobs.close()


async def test_a_failed_job_keeps_how_its_error_is_answered(registry: Registry) -> None:
    jobs = JobManager(registry)
    gate = asyncio.Event()
    gate.set()
    job = await jobs.submit("pull", "m:1", gated(gate, IntegrityError("sha256 mismatch")))
    done = await jobs.wait(job.id)
    assert done.result == {"error": {"status": 422, "type": "store_error", "code": "integrity_error"}}
    final = [e async for e in jobs.watch(job.id)]
    assert final == [
        {
            "status": "failed",
            "job": job.id,
            "error": {"message": "sha256 mismatch", "code": "integrity_error"},
        }
    ]
    await jobs.close()


async def test_a_quiet_job_repeats_its_latest_event_to_watchers(registry: Registry) -> None:
    """With a keepalive, a client reading the stream with a read timeout keeps hearing from a job that
    is busy without progress (resolving a source, hashing)."""
    jobs = JobManager(registry)
    gate = asyncio.Event()
    job = await jobs.submit("pull", "m:1", gated(gate))
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        async for event in jobs.watch(job.id, keepalive=0.02):
            seen.append(event)
            if len(seen) == 5:
                gate.set()

    await asyncio.wait_for(watch(), 10)
    assert seen[1:4] == [seen[1]] * 3  # the same progress line, again and again, while nothing moved
    assert seen[-1]["status"] == "success"
    await jobs.close()
