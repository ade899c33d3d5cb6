"""The model store on a real GGUF: pull from file://, copy, remove + GC, verify, integrity failures."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from superollama.core import MEDIA_MODEL, Layer, Manifest, ModelRef, Progress
from superollama.errors import (
    IntegrityError,
    InvalidModelName,
    InvalidRequest,
    ModelExists,
    ModelNotFound,
    SourceNotFound,
    StoreError,
)
from superollama.store import BlobStore, FileSource, ManifestStore, ModelStore, SourceFile


@pytest.fixture(scope="session")
def smollm2_sha256(smollm2_gguf: Path) -> str:
    h = hashlib.sha256()
    with smollm2_gguf.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="session")
def smollm2_size(smollm2_gguf: Path) -> int:
    return smollm2_gguf.stat().st_size


@pytest.fixture
def store(home: Path) -> ModelStore:
    return ModelStore(home)


def blob_files(home: Path) -> list[str]:
    return (
        sorted(n for n in os.listdir(home / "blobs") if n.startswith("sha256-"))
        if (home / "blobs").exists()
        else []
    )


def tmp_files(home: Path) -> list[str]:
    """Scratch files in tmp/ and partial files beside the blobs."""
    tmp = sorted(os.listdir(home / "tmp")) if (home / "tmp").exists() else []
    blobs = home / "blobs"
    return tmp + sorted(n for n in os.listdir(blobs) if n.endswith(".partial")) if blobs.exists() else tmp


# -- pull --------------------------------------------------------------------------------------------------
async def test_pull_file_url(
    store: ModelStore, home: Path, smollm2_gguf: Path, smollm2_sha256: str, smollm2_size: int
) -> None:
    events: list[Progress] = []
    ref = ModelRef.parse("smollm2:135m")
    manifest = await store.pull(f"file://{smollm2_gguf}", ref, on_progress=events.append)

    digest = f"sha256:{smollm2_sha256}"
    assert manifest.name == "smollm2:135m"
    assert manifest.format == "gguf"
    assert manifest.layers == (Layer(MEDIA_MODEL, digest, smollm2_size, smollm2_gguf.name),)
    assert manifest.source == smollm2_gguf.as_uri()
    assert manifest.metadata["architecture"] == "llama"
    assert manifest.metadata["quantization"] == "Q4_1"
    assert manifest.metadata["parameter_size"] == "135M"
    assert "im_start" in manifest.metadata["chat_template"]

    assert blob_files(home) == [f"sha256-{smollm2_sha256}"]
    assert store.model_path("smollm2:135m") == home / "blobs" / f"sha256-{smollm2_sha256}"
    assert [m.name for m in store.list()] == ["smollm2:135m"]
    on_disk = orjson.loads((home / "manifests" / "smollm2" / "135m").read_bytes())
    assert on_disk["schemaVersion"] == 2
    assert on_disk["layers"][0] == {
        "mediaType": MEDIA_MODEL,
        "digest": digest,
        "size": smollm2_size,
        "filename": smollm2_gguf.name,
    }
    assert datetime.fromisoformat(on_disk["createdAt"]).tzinfo is not None
    assert store.show("smollm2:135m") == manifest
    assert tmp_files(home) == []

    shapes = [e.as_dict() for e in events]
    assert shapes[0] == {"status": "pulling manifest"}
    assert shapes[-3:] == [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    pulling = shapes[1:-3]
    assert len(pulling) >= 3
    total = smollm2_size
    for e in pulling:
        assert e["status"] == f"pulling {smollm2_sha256[:12]}"
        assert e["digest"] == digest and e["total"] == total
    completed = [e["completed"] for e in pulling]
    assert completed == sorted(completed) and completed[0] == 0 and completed[-1] == total


async def test_pull_plain_relative_path(
    store: ModelStore, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(smollm2_gguf.parent)
    manifest = await store.pull(smollm2_gguf.name, "hf.co/HuggingFaceTB/smollm2:Q4_1")
    assert manifest.name == "hf.co/huggingfacetb/smollm2:q4_1"
    assert (store.root / "manifests" / "hf.co" / "huggingfacetb" / "smollm2" / "q4_1").is_file()
    assert [m.name for m in store.list()] == ["hf.co/huggingfacetb/smollm2:q4_1"]


async def test_two_names_one_blob_copy_remove_gc(
    store: ModelStore, home: Path, smollm2_gguf: Path, smollm2_sha256: str
) -> None:
    digest = f"sha256:{smollm2_sha256}"
    await store.pull(str(smollm2_gguf), "smollm2")
    events: list[Progress] = []
    await store.pull(str(smollm2_gguf), "other:v1", on_progress=events.append)
    assert events[-1].status == "success"  # a stored blob is still checked, and reported
    assert blob_files(home) == [f"sha256-{smollm2_sha256}"]

    copied = await store.copy("smollm2", "copy:1")
    assert copied.name == "copy:1" and copied.layers == store.show("smollm2:latest").layers
    assert blob_files(home) == [f"sha256-{smollm2_sha256}"]
    with pytest.raises(ModelExists):
        await store.copy("smollm2", "other:v1")
    with pytest.raises(ModelNotFound):
        await store.copy("nope", "x")
    assert [m.name for m in store.list()] == ["copy:1", "other:v1", "smollm2:latest"]
    assert store.manifests.referenced_digests() == {digest}

    assert await store.remove("smollm2") == set()
    assert await store.remove("copy:1") == set()
    assert blob_files(home) == [f"sha256-{smollm2_sha256}"]
    await store.verify("other:v1")
    assert await store.remove("other:v1") == {digest}
    assert blob_files(home) == []
    assert store.list() == []
    assert list((home / "manifests").iterdir()) == []  # empty folders pruned
    with pytest.raises(ModelNotFound):
        await store.remove("other:v1")
    with pytest.raises(ModelNotFound):
        store.show("other:v1")


async def test_concurrent_pulls_of_one_file(store: ModelStore, home: Path, smollm2_gguf: Path) -> None:
    a, b = await asyncio.gather(store.pull(str(smollm2_gguf), "a"), store.pull(f"file://{smollm2_gguf}", "b"))
    assert a.layers == b.layers
    assert len(blob_files(home)) == 1
    assert tmp_files(home) == []
    assert [m.name for m in store.list()] == ["a:latest", "b:latest"]
    await store.verify("a")
    await store.verify("b")


async def test_repull_replaces_version_and_collects_old_blob(
    store: ModelStore, home: Path, smollm2_gguf: Path, tmp_path: Path, smollm2_sha256: str
) -> None:
    await store.pull(str(smollm2_gguf), "m")
    changed = tmp_path / "changed.gguf"
    data = bytearray(await asyncio.to_thread(smollm2_gguf.read_bytes))
    data[-1] ^= 0xFF  # tensor data, not header: still a valid GGUF, another digest
    await asyncio.to_thread(changed.write_bytes, data)
    manifest = await store.pull(str(changed), "m")
    assert manifest.layers[0].digest == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert blob_files(home) == [f"sha256-{hashlib.sha256(data).hexdigest()}"]
    assert f"sha256-{smollm2_sha256}" not in blob_files(home)


# -- failures leave nothing listed ------------------------------------------------------------------------
async def test_missing_source(store: ModelStore, home: Path, tmp_path: Path) -> None:
    events: list[Progress] = []
    with pytest.raises(SourceNotFound):
        await store.pull(str(tmp_path / "nope.gguf"), "ghost", on_progress=events.append)
    with pytest.raises(SourceNotFound):
        await store.pull(f"file://{tmp_path}/nope.gguf", "ghost")
    assert store.list() == []
    assert not store.exists("ghost")
    assert blob_files(home) == []
    assert all(e.status != "success" for e in events)


async def test_unsupported_sources(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="directory"):
        await store.pull(str(tmp_path), "dir")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InvalidRequest, match="not a GGUF"):
        await store.pull(str(text), "txt")
    with pytest.raises(InvalidRequest, match="unknown source scheme"):
        await store.pull("s3://bucket/model.gguf", "s3")
    with pytest.raises(InvalidModelName):
        await store.pull(str(text), "Bad Name!")
    assert store.list() == []


async def test_broken_gguf_pull_writes_no_manifest_and_keeps_no_blob(
    store: ModelStore, home: Path, smollm2_gguf: Path, tmp_path: Path
) -> None:
    cut = tmp_path / "cut.gguf"
    with smollm2_gguf.open("rb") as f:
        cut.write_bytes(f.read(1000))  # GGUF magic, truncated header
    events: list[Progress] = []
    with pytest.raises(StoreError, match="truncated"):
        await store.pull(str(cut), "broken", on_progress=events.append)
    assert store.list() == []
    assert blob_files(home) == []
    assert tmp_files(home) == []
    assert "success" not in [e.status for e in events]


# -- integrity ---------------------------------------------------------------------------------------------
async def test_verify_detects_corruption_and_truncation(
    store: ModelStore, smollm2_gguf: Path, smollm2_sha256: str
) -> None:
    await store.pull(str(smollm2_gguf), "smollm2")
    await store.verify("smollm2")
    blob = store.model_path("smollm2")

    with blob.open("r+b") as f:
        f.seek(5_000_000)
        byte = f.read(1)
        f.seek(5_000_000)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(IntegrityError, match=smollm2_sha256):
        await store.verify("smollm2")
    with pytest.raises(IntegrityError, match="corrupt"):
        await store.blobs.verify(f"sha256:{smollm2_sha256}")

    with blob.open("r+b") as f:
        f.truncate(1_000_000)
    with pytest.raises(IntegrityError, match="bytes"):
        await store.verify("smollm2")
    with pytest.raises(IntegrityError):  # even without the expected size: the hash differs
        await store.blobs.verify(f"sha256:{smollm2_sha256}")

    blob.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        await store.verify("smollm2")
    with pytest.raises(IntegrityError, match="missing"):
        store.model_path("smollm2")
    with pytest.raises(ModelNotFound):
        await store.verify("nope")


async def test_ingest_expected_digest_mismatch_leaves_nothing(home: Path, smollm2_gguf: Path) -> None:
    blobs = BlobStore(home)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(IntegrityError, match="hash"):
        await blobs.ingest(smollm2_gguf, expected_digest=wrong)
    assert blob_files(home) == []
    assert tmp_files(home) == []
    with pytest.raises(IntegrityError, match="bytes"):
        await blobs.ingest(smollm2_gguf, expected_size=123)
    assert blob_files(home) == []
    assert tmp_files(home) == []


async def test_ingest_streams_and_dedupes(home: Path) -> None:
    blobs = BlobStore(home, chunk_size=1024)
    payload = os.urandom(10_000)
    digest = f"sha256:{hashlib.sha256(payload).hexdigest()}"

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 300):
            yield payload[i : i + 300]

    seen: list[int] = []
    blob = await blobs.ingest(chunks(), on_progress=seen.append)
    assert (blob.digest, blob.size) == (digest, len(payload))
    assert blob.path.read_bytes() == payload
    assert seen == sorted(seen) and seen[-1] == len(payload) and len(seen) >= 5
    inode = blob.path.stat().st_ino

    again = await blobs.ingest([payload[:5000], payload[5000:]], expected_digest=digest)
    assert again == blob
    assert blob.path.stat().st_ino == inode  # not rewritten
    with pytest.raises(IntegrityError):  # a stored blob does not excuse wrong incoming bytes
        await blobs.ingest([payload[:-1]], expected_digest=digest)
    assert blob.path.read_bytes() == payload

    racing = await asyncio.gather(*(blobs.ingest(chunks()) for _ in range(5)))
    assert {b.digest for b in racing} == {digest}
    assert blob_files(home) == [f"sha256-{digest[7:]}"]
    assert tmp_files(home) == []
    assert list(blobs.iter_digests()) == [digest]
    assert blobs.disk_usage() == len(payload)

    assert blobs.delete(digest) is True
    assert blobs.delete(digest) is False
    with pytest.raises(InvalidRequest):
        blobs.path("sha256:../../etc/passwd")


async def test_gc_spares_pinned_blobs(store: ModelStore, home: Path) -> None:
    blob = await store.blobs.ingest([b"in flight"], pin=True)
    assert await store.gc() == set()
    assert store.blobs.has(blob.digest)
    store.blobs.unpin(blob.digest)
    assert await store.gc() == {blob.digest}
    assert blob_files(home) == []


# -- manifests and sources -----------------------------------------------------------------------------------
def test_manifest_round_trip(home: Path) -> None:
    manifests = ManifestStore(home)
    manifest = Manifest(
        name="ns/model:tag",
        format="gguf",
        layers=(
            Layer(MEDIA_MODEL, "sha256:" + "a" * 64, 12, "m.gguf"),
            Layer("x/y", "sha256:" + "b" * 64, 3),
        ),
        metadata={"n": 1, "nested": {"list": [1, "two"]}},
        source="file:///m.gguf",
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    written = manifests.write(manifest)
    assert written == manifest
    assert manifests.read("NS/Model:Tag") == manifest
    assert manifests.path("ns/model:tag") == home / "manifests" / "ns" / "model" / "tag"
    assert manifests.referenced_digests() == {"sha256:" + "a" * 64, "sha256:" + "b" * 64}
    (home / "manifests" / "ns" / "model" / "tag").write_text("{broken")
    with pytest.raises(StoreError):
        manifests.read("ns/model:tag")
    assert manifests.list() == []  # skipped, logged
    assert manifests.referenced_digests() == set()
    with pytest.raises(ModelNotFound):
        manifests.read("absent")


async def test_file_source_plan(smollm2_gguf: Path, smollm2_sha256: str, smollm2_size: int) -> None:
    source = FileSource()
    plan = await source.resolve(smollm2_gguf.as_uri())
    assert plan.format == "gguf"
    assert plan.source == smollm2_gguf.as_uri()
    assert plan.total_size == smollm2_size
    (file,) = plan.files
    assert file == SourceFile(
        filename=smollm2_gguf.name,
        location=str(smollm2_gguf),
        size=smollm2_size,
        digest=f"sha256:{smollm2_sha256}",
        media_type=MEDIA_MODEL,
    )
    async with aclosing(source.open(file)) as stream:
        first = await anext(stream)
    assert first[:4] == b"GGUF"


async def test_cancelled_pull_leaves_nothing(store: ModelStore, home: Path, smollm2_gguf: Path) -> None:
    copying = asyncio.Event()

    def on_progress(p: Progress) -> None:
        if p.completed:
            copying.set()

    task = asyncio.create_task(store.pull(str(smollm2_gguf), "cancelled", on_progress=on_progress))
    await copying.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.list() == []
    assert blob_files(home) == []
    assert tmp_files(home) == []
