"""Moving a version's blobs to another storage root: copy, verify, switch, delete — readers never fail."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from superollama.core import Progress
from superollama.errors import IntegrityError, InvalidRequest
from superollama.store import ModelStore


async def test_move_switches_to_a_verified_copy_and_frees_the_old_bytes(
    home: Path, tmp_path: Path, smollm2_gguf: Path
) -> None:
    store = ModelStore(home)
    manifest = await store.pull(smollm2_gguf.as_uri(), "smol:1")
    digest = manifest.model_layer.digest
    old_path = store.model_path("smol:1")
    reader = old_path.open("rb")  # a running backend holding the old file open
    events: list[Progress] = []
    fast = tmp_path / "fast-disk"

    moved = await store.move("smol:1", fast, on_progress=events.append)

    assert moved == (digest,)
    new_file = fast / "blobs" / ("sha256-" + digest[7:])
    assert new_file.is_file() and not new_file.is_symlink()
    assert store.blobs.path(digest).is_symlink() and store.blobs.path(digest).resolve() == new_file
    assert hashlib.sha256(store.model_path("smol:1").read_bytes()).hexdigest() == digest[7:]
    assert reader.read(4) == b"GGUF"  # the old inode is still readable by whoever had it open
    reader.close()
    assert events[-1].status == "success" and any(e.status.startswith("switching") for e in events)
    assert events[-2].completed is None or events[-2].status.startswith("switching")
    await store.verify("smol:1")

    # a second move elsewhere deletes the intermediate copy
    moved_again = await store.move("smol:1", tmp_path / "other")
    assert moved_again == (digest,) and not new_file.exists()
    assert await store.move("smol:1", tmp_path / "other") == ()  # already there

    # removing the version removes the moved bytes too
    await store.remove("smol:1")
    assert not any((tmp_path / "other" / "blobs").iterdir())
    assert not store.blobs.path(digest).is_symlink() and not store.blobs.path(digest).exists()


async def test_move_refuses_the_store_itself_and_a_corrupt_blob(
    home: Path, smollm2_gguf: Path, tmp_path: Path
) -> None:
    store = ModelStore(home)
    manifest = await store.pull(smollm2_gguf.as_uri(), "smol:1")
    with pytest.raises(InvalidRequest):
        await store.move("smol:1", home)
    blob = store.blobs.path(manifest.model_layer.digest)
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        await store.move("smol:1", tmp_path / "dest")
    assert not blob.is_symlink()  # nothing switched
    assert not list((tmp_path / "dest" / "blobs").iterdir())  # no partial copy left
