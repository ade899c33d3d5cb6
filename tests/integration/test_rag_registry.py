"""Migration 13's repository on SQLite and Postgres: files and vector stores belong to their key, cursor
pages, files of a store and of a batch, and groundings (which bump the ``deployments`` change kind)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from tests.integration.test_registry import Clock

from superollama.registry import Registry, open_registry
from superollama.registry._rag import FileRecord, GroundingRecord, StoreFileRecord, VectorStoreRecord
from superollama.registry.schema import generations


@pytest.fixture
async def registry(db_url: str) -> AsyncIterator[Registry]:
    reg = await open_registry(db_url, clock=Clock())
    try:
        yield reg
    finally:
        await reg.close()


async def _generation(reg: Registry, name: str) -> int:
    async with reg.engine.connect() as conn:
        return int(
            (await conn.execute(select(generations.c.value).where(generations.c.name == name))).scalar_one()
        )


async def test_files_belong_to_their_key_and_page_by_cursor(registry: Registry) -> None:
    repo = registry.rag
    clock = Clock()
    for i in range(5):
        await repo.add_file(
            FileRecord(
                f"file-{i}",
                f"f{i}.txt",
                "assistants" if i % 2 else "fine-tune",
                10 + i,
                "sha256:" + "a" * 64,
                key_id="k1",
            )
        )
        clock.tick()
    await repo.add_file(FileRecord("file-x", "x.txt", "assistants", 1, "sha256:" + "b" * 64, key_id="k2"))
    assert await repo.file("file-x", key_id="k1") is None
    got = await repo.file("file-1", key_id="k1")
    assert got is not None and got.bytes == 11 and got.created_at is not None and got.created_at.tzinfo
    ids = [f.id for f in await repo.files(key_id="k1", order="asc")]
    assert sorted(ids) == [f"file-{i}" for i in range(5)]
    assert [f.id for f in await repo.files(key_id="k1", order="asc", after=ids[1], limit=2)] == ids[2:4]
    desc = [f.id for f in await repo.files(key_id="k1")]
    assert desc == list(reversed(ids))
    assert {f.id for f in await repo.files(key_id="k1", purpose="fine-tune")} == {
        "file-0",
        "file-2",
        "file-4",
    }
    assert await repo.digest_used("sha256:" + "a" * 64)
    assert not await repo.delete_file("file-1", key_id="k2")
    assert await repo.delete_file("file-1", key_id="k1")
    assert await repo.file("file-1", key_id="k1") is None


async def test_vector_stores_their_files_batches_and_grounding(registry: Registry) -> None:
    repo = registry.rag
    store = await repo.add_store(
        VectorStoreRecord(
            "vs_1", "all-minilm", "sqlite-vec", name="docs", metadata={"team": "a"}, key_id="k1"
        )
    )
    assert store.created_at is not None
    assert await repo.store("vs_1", key_id="k2") is None
    assert (await repo.any_store("vs_1")) is not None
    await repo.update_store("vs_1", name="renamed")
    renamed = await repo.store("vs_1", key_id="k1")
    assert renamed is not None and renamed.name == "renamed" and dict(renamed.metadata) == {"team": "a"}
    batch = await repo.add_batch("vsfb_1", "vs_1")
    chunking = {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}
    for fid, batch_id in (("file-a", None), ("file-b", batch.id), ("file-c", batch.id)):
        await repo.put_store_file(StoreFileRecord("vs_1", fid, "in_progress", chunking, {"n": 1}, batch_id))
    await repo.set_store_file("vs_1", "file-b", status="completed", usage_bytes=99, chunks=3)
    assert [f.file_id for f in await repo.store_files("vs_1", batch_id=batch.id)] == ["file-b", "file-c"]
    assert [f.file_id for f in await repo.store_files("vs_1", status="completed")] == ["file-b"]
    again = await repo.put_store_file(StoreFileRecord("vs_1", "file-b", "in_progress", chunking, {}, None))
    assert again.usage_bytes == 0 and (await repo.store_file("vs_1", "file-b")).status == "in_progress"  # type: ignore[union-attr]
    assert await repo.stores_with_file("file-a") == ["vs_1"]
    assert await repo.fail_unfinished("server stopped") == 3  # a, c, and b (in progress again above)
    assert [f.file_id for f in await repo.store_files("vs_1", status="failed")] == [
        "file-a",
        "file-b",
        "file-c",
    ]
    assert (await repo.store_file("vs_1", "file-c")).last_error == {  # type: ignore[union-attr]
        "code": "server_error",
        "message": "server stopped",
    }
    await repo.cancel_batch(batch.id)
    assert (await repo.batch("vs_1", batch.id)).cancelled  # type: ignore[union-attr]
    assert await repo.delete_store_file("vs_1", "file-a")

    before = await _generation(registry, "deployments")
    await repo.put_grounding(GroundingRecord("smollm2:135m", ["vs_1"], 3, 0.2, "Use {context}"))
    await repo.put_grounding(GroundingRecord("smollm2:135m", ["vs_1"], 5, None, None))
    (g,) = await repo.groundings()
    assert (g.top_k, g.score_threshold, list(g.vector_store_ids)) == (5, None, ["vs_1"])
    assert await _generation(registry, "deployments") == before + 2
    assert await repo.delete_grounding("smollm2:135m") and not await repo.groundings()

    await repo.delete_store("vs_1")
    assert await repo.store("vs_1", key_id="k1") is None and await repo.store_files("vs_1") == []
