"""The registry's part of OpenAI batches, on SQLite and Postgres: a batch and its requests, status moves
guarded by the status they come from, each request's outcome written once (and counted once on the
batch) while it is pending, pending ones closed unsent, pages per key — and a ``BatchManager`` over a
registry opened again (a restarted server) sending only what had not finished."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_registry import Clock

from superollama.control.batch_files import batch_json
from superollama.control.batches import Answer, BatchManager
from superollama.errors import InvalidRequest, NotFound
from superollama.registry import Registry, open_registry
from superollama.registry._batches import BatchRecord, Outcome
from superollama.registry._rag import FileRecord


@pytest.fixture
async def registry(db_url: str) -> AsyncIterator[tuple[Registry, Clock]]:
    clock = Clock()
    reg = await open_registry(db_url, clock=clock)
    try:
        yield reg, clock
    finally:
        await reg.close()


def batch(batch_id: str, clock: Clock, key_id: str | None = "k1") -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        endpoint="/v1/chat/completions",
        input_file_id="file-1",
        expires_at=clock() + timedelta(hours=24),
        key_id=key_id,
        key_prefix="so-abc",
        metadata={"job": "nightly"},
    )


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_batch_starts_records_each_request_once_and_finishes(
    registry: tuple[Registry, Clock],
) -> None:
    reg, clock = registry
    added = await reg.batches.add(batch("batch_a", clock))
    assert added.status == "validating" and added.metadata == {"job": "nightly"} and added.created_at
    assert [b.id for b in await reg.batches.active()] == ["batch_a"]
    started = await reg.batches.start("batch_a", [(1, "one", BODY), (2, "two", BODY), (4, "four", BODY)])
    assert started is not None and started.status == "in_progress" and started.total == 3
    assert started.in_progress_at is not None
    assert await reg.batches.start("batch_a", [(1, "one", BODY)]) is None  # started once only
    assert [r.line for r in await reg.batches.pending("batch_a")] == [1, 2, 4]

    ok = Outcome("completed", 200, "req_1", {"id": "x", "usage": {}}, input_tokens=5, output_tokens=7)
    assert await reg.batches.record("batch_a", 1, ok)
    assert not await reg.batches.record("batch_a", 1, ok)  # a second report of it counts nothing
    failed = Outcome("failed", 404, "req_2", {"error": {"message": "no model"}})
    assert await reg.batches.record("batch_a", 2, failed)
    now = await reg.batches.find_any("batch_a")
    assert now is not None and (now.completed, now.failed) == (1, 1)
    assert (now.input_tokens, now.output_tokens) == (5, 7)
    assert [r.line for r in await reg.batches.pending("batch_a")] == [4]

    cancelling = await reg.batches.move("batch_a", "cancelling", expect=("validating", "in_progress"))
    assert cancelling is not None and cancelling.cancelling_at is not None
    assert await reg.batches.move("batch_a", "cancelling", expect=("in_progress",)) is None
    closed = await reg.batches.close_pending(
        "batch_a", "cancelled", {"code": "batch_cancelled", "message": "m"}
    )
    assert closed == 1 and await reg.batches.pending("batch_a") == []
    assert await reg.batches.states("batch_a") == {"completed": 1, "failed": 1, "cancelled": 1}
    requests = await reg.batches.requests("batch_a")
    assert [(r.line, r.custom_id, r.state, r.status_code) for r in requests] == [
        (1, "one", "completed", 200),
        (2, "two", "failed", 404),
        (4, "four", "cancelled", None),
    ]
    assert requests[0].body == BODY and requests[0].response == {"id": "x", "usage": {}}
    assert requests[2].error == {"code": "batch_cancelled", "message": "m"} and requests[2].finished_at
    done = await reg.batches.move(
        "batch_a", "cancelled", expect=("cancelling",), output_file_id="file-o", error_file_id="file-e"
    )
    assert done is not None and done.cancelled_at is not None and done.output_file_id == "file-o"
    assert await reg.batches.active() == []
    shown = batch_json(done)
    assert shown["status"] == "cancelled" and shown["request_counts"] == {
        "total": 3,
        "completed": 1,
        "failed": 1,
    }
    assert shown["usage"]["total_tokens"] == 12 and shown["errors"] is None


async def test_batches_are_paged_newest_first_per_key(registry: tuple[Registry, Clock]) -> None:
    reg, clock = registry
    for i in range(5):
        clock.tick(1)
        await reg.batches.add(batch(f"batch_{i}", clock, key_id="k1" if i != 2 else "k2"))
    await reg.batches.add(batch("batch_nokey", clock, key_id=None))
    page = await reg.batches.list(key_id="k1", limit=2)
    assert [b.id for b in page] == ["batch_4", "batch_3"]
    page = await reg.batches.list(key_id="k1", limit=2, after="batch_3")
    assert [b.id for b in page] == ["batch_1", "batch_0"]
    assert await reg.batches.list(key_id="k1", after="batch_0") == []
    assert [b.id for b in await reg.batches.list(key_id="k2")] == ["batch_2"]
    assert [b.id for b in await reg.batches.list(key_id=None)] == ["batch_nokey"]
    assert await reg.batches.find("batch_2", key_id="k1") is None
    assert (await reg.batches.find("batch_2", key_id="k2")) is not None


class Files:
    """The two files a batch needs, in memory: its input, and what it writes."""

    def __init__(self, data: bytes) -> None:
        self.saved: dict[str, bytes] = {}
        self.data = data

    async def get(self, file_id: str, *, key_id: str | None) -> FileRecord:
        if file_id != "file-in" and file_id not in self.saved:
            raise NotFound(f"No such File object: {file_id}")
        return FileRecord(file_id, "in.jsonl", "batch", len(self.data), "d", key_id)

    async def read(self, record: FileRecord) -> bytes:
        return self.saved.get(record.id, self.data)

    async def save(self, data: bytes, filename: str, purpose: str, *, key_id: str | None) -> FileRecord:
        file_id = f"file-{len(self.saved)}"
        self.saved[file_id] = data
        return FileRecord(file_id, filename, purpose, len(data), "d", key_id)


class Echo:
    """A sender that answers each request with its body, and can hold the ones after ``hold_after``."""

    def __init__(self, hold_after: int | None = None) -> None:
        self.sent: list[str] = []
        self.hold_after = hold_after
        self.held = asyncio.Event()

    def ready(self) -> bool:
        return True

    async def send(self, batch: BatchRecord, url: str, body: Mapping[str, Any], request_id: str) -> Answer:
        self.sent.append(request_id)
        if self.hold_after is not None and len(self.sent) > self.hold_after:
            self.held.set()
            await asyncio.Event().wait()  # in flight until the runner is stopped
        usage = {"prompt_tokens": 1, "completion_tokens": 2}
        return Answer(200, {"echo": body["messages"][0]["content"], "usage": usage}, request_id)


def _input(n: int) -> bytes:
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": str(i)}]},
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(x) for x in lines).encode()


async def test_a_manager_opened_again_sends_only_what_had_not_finished(db_url: str, tmp_path: Path) -> None:
    files = Files(_input(6))
    reg = await open_registry(db_url)
    try:
        first = Echo(hold_after=3)  # answers 3, then holds the 4th (and with 1 at a time, nothing else)
        manager = BatchManager(reg.batches, files, first, concurrency=1, poll=0.05)
        made = await manager.create(
            {"input_file_id": "file-in", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
            key_id="k1",
            key_prefix="so-abc",
        )
        with pytest.raises(InvalidRequest, match="completion_window"):
            await manager.create(
                {"input_file_id": "file-in", "endpoint": "/v1/chat/completions", "completion_window": "1h"},
                key_id="k1",
                key_prefix="so-abc",
            )
        assert await manager.tick() == 1
        await asyncio.wait_for(first.held.wait(), 10)
        await manager.close()  # the server stops: the held request stays pending
        assert await reg.batches.states(made.id) == {"completed": 3, "pending": 3}
    finally:
        await reg.close()

    reg = await open_registry(db_url)  # the server starts again
    try:
        second = Echo()
        manager = BatchManager(reg.batches, files, second, concurrency=2, poll=0.05)
        await manager.elected(True)
        for _ in range(200):
            done = await reg.batches.find_any(made.id)
            if done is not None and done.status == "completed":
                break
            await asyncio.sleep(0.05)
        await manager.close()
        assert done is not None and done.status == "completed", done
        assert sorted(second.sent) == [f"req_{made.id.removeprefix('batch_')}_{i}" for i in (4, 5, 6)]
        assert (done.total, done.completed, done.failed, done.input_tokens) == (6, 6, 0, 6)
        assert done.output_file_id is not None and done.error_file_id is None
        lines = files.saved[done.output_file_id].decode().splitlines()
        assert [line.count('"custom_id"') for line in lines] == [1] * 6
        assert '"custom_id":"c0"' in lines[0] and '"echo":"5"' in lines[5]
    finally:
        await reg.close()


async def test_a_batch_whose_window_ended_expires_unsent(registry: tuple[Registry, Clock]) -> None:
    reg, clock = registry
    files = Files(_input(3))
    sender = Echo()
    manager = BatchManager(reg.batches, files, sender, concurrency=2, poll=0.05)
    made = await manager.create(
        {"input_file_id": "file-in", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        key_id=None,
        key_prefix=None,
    )
    clock.tick(24 * 3600 + 1)  # the leader was away for the whole window
    assert await manager.tick() == 1
    await manager.wait(made.id)
    done = await reg.batches.find_any(made.id)
    assert done is not None and done.status == "expired" and done.expired_at is not None
    assert sender.sent == [] and (done.total, done.completed, done.failed) == (3, 0, 0)
    assert done.output_file_id is None and done.error_file_id is not None
    lines = [json.loads(x) for x in files.saved[done.error_file_id].decode().splitlines()]
    assert [x["custom_id"] for x in lines] == ["c0", "c1", "c2"]
    assert all(x["response"] is None and x["error"]["code"] == "batch_expired" for x in lines)


async def test_a_cancel_before_the_leader_looks_sends_nothing(registry: tuple[Registry, Clock]) -> None:
    reg, _ = registry
    files = Files(_input(2))
    sender = Echo()
    manager = BatchManager(reg.batches, files, sender, concurrency=2, poll=0.05)
    made = await manager.create(
        {"input_file_id": "file-in", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        key_id="k1",
        key_prefix="so-abc",
    )
    cancelling = await manager.cancel(made.id, key_id="k1")
    assert cancelling.status == "cancelling"
    with pytest.raises(NotFound):
        await manager.cancel(made.id, key_id="k2")
    assert await manager.tick() == 1
    await manager.wait(made.id)
    done = await manager.get(made.id, key_id="k1")
    assert done.status == "cancelled" and done.cancelled_at is not None and sender.sent == []
    assert done.output_file_id is None and done.error_file_id is None  # it never started: no requests
    assert (await manager.cancel(made.id, key_id="k1")).status == "cancelled"


class Unreadable(Files):
    async def read(self, record: FileRecord) -> bytes:
        raise FileNotFoundError(2, "No such file or directory")


async def test_an_input_file_that_cannot_be_read_fails_the_batch(registry: tuple[Registry, Clock]) -> None:
    reg, _ = registry
    manager = BatchManager(reg.batches, Unreadable(b""), Echo(), poll=0.05)
    made = await manager.create(
        {"input_file_id": "file-in", "endpoint": "/v1/embeddings", "completion_window": "24h"},
        key_id=None,
        key_prefix=None,
    )
    assert await manager.tick() == 1
    await manager.wait(made.id)
    done = await manager.get(made.id, key_id=None)
    assert done.status == "failed" and done.errors is not None
    assert [(e["code"], e["param"]) for e in done.errors] == [("file_unreadable", "input_file_id")]
    assert "cannot be read here: No such file or directory" in done.errors[0]["message"]
