"""``cluster/blobs.py``: a node's blob copy, without Ray — the sources read real blob files of another
store root (what a node's actor serves), one of them failing part-way as a dropped node would."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from superollama.cluster.blobs import BlobSource, NodeBlobs, TransferFailed, read_blob_chunk
from superollama.errors import IntegrityError, StoreError

CHUNK = 64 * 1024


def _blob(root: Path, data: bytes) -> tuple[str, Path]:
    hexdigest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / f"sha256-{hexdigest}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{hexdigest}", path


def _source(name: str, path: Path, digest: str, *, fail_from: int | None = None) -> BlobSource:
    """Chunks of a blob file; with ``fail_from``, every read at or past that offset fails."""

    async def read(offset: int, length: int) -> bytes:
        if fail_from is not None and offset >= fail_from:
            raise ConnectionError(f"{name} is gone")
        return await asyncio.to_thread(read_blob_chunk, path, digest, offset, length)

    return BlobSource(name, read)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "blobs").iterdir()) if (root / "blobs").is_dir() else []


@pytest.fixture
def data() -> bytes:
    return os.urandom(5 * CHUNK + 1234)


async def test_a_blob_is_copied_in_chunks_verified_and_placed(tmp_path: Path, data: bytes) -> None:
    digest, src = _blob(tmp_path / "a", data)
    node = NodeBlobs(tmp_path / "b", chunk_size=CHUNK, window=2)
    assert node.local(digest) is None
    path = await node.fetch(digest, len(data), [_source("a", src, digest)])
    assert path == tmp_path / "b" / "blobs" / src.name
    assert path.read_bytes() == data
    assert _leftovers(tmp_path / "b") == [src.name]  # no partial file left beside it
    assert node.local(digest) == (str(path), len(data))
    report = node.report()
    assert report["in_progress"] == []
    [done] = report["recent"]
    assert (done["source"], done["bytes"], done["resumed_from"]) == ("a", len(data), 0)
    # already there: nothing is transferred again
    assert await node.fetch(digest, len(data), []) == path
    assert node.transfers == 1


async def test_a_tampered_chunk_is_refused_and_nothing_is_left(tmp_path: Path, data: bytes) -> None:
    digest, src = _blob(tmp_path / "a", data)
    with src.open("r+b") as f:  # one byte of the source's copy changed, its size the same
        f.seek(3 * CHUNK + 7)
        f.write(bytes([data[3 * CHUNK + 7] ^ 0xFF]))
    node = NodeBlobs(tmp_path / "b", chunk_size=CHUNK)
    with pytest.raises(IntegrityError) as refused:
        await node.fetch(digest, len(data), [_source("a", src, digest)])
    assert f"blob {digest} copied from a: the received bytes hash to sha256:" in refused.value.message
    assert "refused" in refused.value.message
    assert _leftovers(tmp_path / "b") == []
    assert node.local(digest) is None


async def test_a_failing_source_is_retried_then_the_next_one_continues(tmp_path: Path, data: bytes) -> None:
    digest, src = _blob(tmp_path / "a", data)
    node = NodeBlobs(tmp_path / "b", chunk_size=CHUNK, window=1, attempts=2, retry_delay=0.01)
    flaky = _source("a", src, digest, fail_from=2 * CHUNK)
    path = await node.fetch(digest, len(data), [flaky, _source("c", src, digest)])
    assert path.read_bytes() == data
    [done] = node.report()["recent"]
    assert done["source"] == "c"


async def test_an_interrupted_transfer_keeps_its_bytes_and_resumes(tmp_path: Path, data: bytes) -> None:
    digest, src = _blob(tmp_path / "a", data)
    node = NodeBlobs(tmp_path / "b", chunk_size=CHUNK, window=1, attempts=2, retry_delay=0.01)
    with pytest.raises(TransferFailed) as failed:
        await node.fetch(digest, len(data), [_source("a", src, digest, fail_from=3 * CHUNK)])
    assert "no source could send it (a: reading" in failed.value.message
    assert f"{3 * CHUNK} bytes kept" in failed.value.message
    [partial] = _leftovers(tmp_path / "b")
    assert partial.endswith(".partial") and (tmp_path / "b" / "blobs" / partial).stat().st_size == 3 * CHUNK
    assert node.local(digest) is None  # not listed while partial

    path = await node.fetch(digest, len(data), [_source("a", src, digest)])
    assert path.read_bytes() == data
    [done] = node.report()["recent"]
    assert done["resumed_from"] == 3 * CHUNK and done["bytes"] == len(data) - 3 * CHUNK
    assert _leftovers(tmp_path / "b") == [src.name]


async def test_concurrent_fetches_of_one_blob_share_one_transfer(tmp_path: Path, data: bytes) -> None:
    digest, src = _blob(tmp_path / "a", data)
    node = NodeBlobs(tmp_path / "b", chunk_size=CHUNK, window=1)
    reads = 0
    inner = _source("a", src, digest)

    async def counted(offset: int, length: int) -> bytes:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)  # the transfer is still running when the other fetches arrive
        return await inner.read(offset, length)

    paths = await asyncio.gather(
        *(node.fetch(digest, len(data), [BlobSource("a", counted)]) for _ in range(4))
    )
    assert len(set(paths)) == 1 and paths[0].read_bytes() == data
    assert node.transfers == 1
    assert reads == 6  # each chunk read once (5 full chunks and the tail)


async def test_only_blob_files_are_served(tmp_path: Path, data: bytes) -> None:
    digest, src = _blob(tmp_path / "a", data)
    other = tmp_path / "a" / "secret"
    other.write_bytes(b"not a blob")
    with pytest.raises(StoreError):
        read_blob_chunk(other, digest, 0, 10)
    shared = NodeBlobs(None)  # a node reading the control plane's files
    assert shared.local(digest, str(src)) == (str(src), len(data))
    assert shared.local(digest, str(other)) is None
    assert shared.read(digest, str(src), 5, 10) == data[5:15]
    with pytest.raises(StoreError):
        await shared.fetch(digest, len(data), [])
