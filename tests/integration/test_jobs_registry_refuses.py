"""A job ends even when the registry cannot record its end: its SQLite file on a small filesystem that
fills up ("database or disk is full"), then has room again, when the end is written after all."""

from __future__ import annotations

import asyncio
import errno
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from tests.failing_io import Tmpfs

from superollama.control import JobManager
from superollama.control.jobs import Emit
from superollama.core import JobRecord, JobState, Progress
from superollama.errors import Conflict, IntegrityError
from superollama.registry import Registry, open_registry


def fill(path: Path) -> None:
    """Write ``path`` until its filesystem has no byte left."""
    with path.open("wb", buffering=0) as f:
        for size in (2**20, 4096, 1):
            try:
                while f.write(b"\0" * size):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc


async def wait_for_state(registry: Registry, job_id: str, state: JobState) -> None:
    for _ in range(150):  # 30 s
        if (await registry.jobs.get(job_id)).state is state:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{job_id} never recorded as {state}")


async def test_a_job_ends_for_its_watchers_when_the_registry_refuses_the_write(
    tmp_path: Path, tmpfs: Tmpfs
) -> None:
    folder = tmpfs.mount(tmp_path / "db", 16)
    registry = await open_registry(f"sqlite+aiosqlite:///{folder / 'registry.db'}")
    jobs = JobManager(registry)
    gate = asyncio.Event()

    async def work(emit: Emit) -> Mapping[str, Any]:
        emit(Progress("pulling abc", digest="sha256:abc", total=10, completed=3))
        await gate.wait()
        raise IntegrityError("sha256 mismatch")

    job = await jobs.submit("pull", "m:1", work)
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        async for event in jobs.watch(job.id):
            seen.append(event)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.to_thread(fill, folder / "filler")
        gate.set()
        await asyncio.wait_for(watcher, 20)  # the stream ends with the job, though nothing was recorded
        assert seen[-1]["status"] == "failed" and seen[-1]["error"]["message"] == "sha256 mismatch"
        ended = await jobs.get(job.id)
        assert ended.state is JobState.FAILED and ended.error == "sha256 mismatch"
        with pytest.raises(Conflict, match="already ended"):
            await jobs.cancel(job.id)
        assert (await registry.jobs.get(job.id)).state is JobState.RUNNING  # not written: disk full
    finally:
        (folder / "filler").unlink()

    await wait_for_state(registry, job.id, JobState.FAILED)  # written once the registry has room again
    assert (await registry.jobs.get(job.id)).error == "sha256 mismatch"
    await jobs.close()
    await registry.close()


@pytest.mark.postgres
async def test_cancel_answers_in_every_state_on_postgres(pg_registry: Registry) -> None:
    jobs = JobManager(pg_registry)
    never: asyncio.Event = asyncio.Event()

    async def work(emit: Emit) -> Mapping[str, Any]:
        await never.wait()
        return {}

    queued = await jobs.submit("pull", "m:1", work)
    assert (await jobs.cancel(queued.id)).state is JobState.CANCELLED  # before its task ever ran

    await pg_registry.jobs.add(JobRecord(id=f"job-{uuid.uuid4().hex[:8]}", kind="pull", target="m:2"))
    (orphan,) = [j for j in await pg_registry.jobs.list() if j.state is JobState.RUNNING]
    assert (await jobs.cancel(orphan.id)).state is JobState.CANCELLED
    with pytest.raises(Conflict, match=r"already ended \(cancelled"):
        await jobs.cancel(orphan.id)
    assert {j.state for j in await pg_registry.jobs.list()} == {JobState.CANCELLED}
    await jobs.close()
