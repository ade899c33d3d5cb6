"""Migration 16's repository on SQLite and Postgres: fine-tuning jobs belong to their key and page newest
first by cursor, a final status is never left, unfinished jobs are what a leader resumes, and events and
checkpoints list newest first with their cursors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.integration.test_registry import Clock

from superollama.registry import Registry, open_registry
from superollama.registry._finetune import CheckpointRecord, FineTuneRecord


@pytest.fixture
async def clocked(db_url: str) -> AsyncIterator[tuple[Registry, Clock]]:
    clock = Clock()
    reg = await open_registry(db_url, clock=clock)
    try:
        yield reg, clock
    finally:
        await reg.close()


def _job(job_id: str, key_id: str | None = "k1") -> FineTuneRecord:
    return FineTuneRecord(
        id=job_id,
        model="smollm2:135m",
        training_file="file-1",
        hyperparameters={"n_epochs": 2, "target_modules": ["q_proj", "v_proj"]},
        seed=7,
        key_id=key_id,
        metadata={"team": "a"},
    )


async def test_jobs_belong_to_their_key_and_page_newest_first(clocked: tuple[Registry, Clock]) -> None:
    registry, clock = clocked
    repo = registry.fine_tuning
    for i in range(4):
        await repo.add(_job(f"ftjob-{i}"))
        clock.tick()
    await repo.add(_job("ftjob-other", key_id="k2"))
    assert await repo.get("ftjob-other", key_id="k1") is None
    assert (await repo.get("ftjob-other", any_key=True)) is not None
    got = await repo.get("ftjob-2", key_id="k1")
    assert got is not None and got.hyperparameters["target_modules"] == ["q_proj", "v_proj"]
    assert got.status == "validating_files" and got.metadata == {"team": "a"} and got.seed == 7
    page = await repo.jobs(key_id="k1", limit=2)
    assert [j.id for j in page] == ["ftjob-3", "ftjob-2"]
    rest = await repo.jobs(key_id="k1", after="ftjob-2", limit=10)
    assert [j.id for j in rest] == ["ftjob-1", "ftjob-0"]


async def test_a_final_status_is_never_left_and_unfinished_jobs_are_listed(
    clocked: tuple[Registry, Clock],
) -> None:
    registry, clock = clocked
    repo = registry.fine_tuning
    await repo.add(_job("ftjob-a"))
    clock.tick()
    await repo.add(_job("ftjob-b"))
    assert await repo.update("ftjob-a", status="running", trained_tokens=10)
    assert await repo.update("ftjob-b", status="cancelled")
    assert not await repo.update("ftjob-b", status="running")  # cancelled stays cancelled
    ended = await repo.get("ftjob-b", any_key=True)
    assert ended is not None and ended.status == "cancelled" and ended.finished_at is not None
    assert [j.id for j in await repo.unfinished()] == ["ftjob-a"]
    error = {"code": "error", "message": "boom", "param": None}
    assert await repo.update("ftjob-a", status="failed", error=error)
    failed = await repo.get("ftjob-a", any_key=True)
    assert failed is not None and failed.error == error and failed.trained_tokens == 10
    assert await repo.unfinished() == []


async def test_events_and_checkpoints_list_newest_first(clocked: tuple[Registry, Clock]) -> None:
    registry, _clock = clocked
    repo = registry.fine_tuning
    await repo.add(_job("ftjob-e"))
    first = await repo.add_event("ftjob-e", "started")
    for step in (1, 2, 3):
        await repo.add_event(
            "ftjob-e", f"Step {step}", type="metrics", data={"step": step, "train_loss": 1.0}
        )
    events = await repo.events("ftjob-e", limit=2)
    assert [e.message for e in events] == ["Step 3", "Step 2"]
    assert events[0].type == "metrics" and events[0].data == {"step": 3, "train_loss": 1.0}
    older = await repo.events("ftjob-e", after=events[-1].id, limit=10)
    assert [e.message for e in older] == ["Step 1", "started"] and older[-1].id == first.id
    for step in (2, 4, 6):
        await repo.add_checkpoint(
            CheckpointRecord(f"ftckpt-{step}", "ftjob-e", step, {"step": step}, f"/ckpt/step-{step}")
        )
    checkpoints = await repo.checkpoints("ftjob-e", limit=2)
    assert [c.step for c in checkpoints] == [6, 4]
    assert [c.step for c in await repo.checkpoints("ftjob-e", after="ftckpt-4")] == [2]
