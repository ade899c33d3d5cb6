"""Moving a version's files between storage roots: only declared roots, per-version locations (a version
made by ``cp`` keeps its files where they are), moving back home, nothing left behind, readers never fail."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from superollama.core import Layer, Manifest, Progress
from superollama.errors import IntegrityError, InvalidRequest, StoreError
from superollama.settings import Settings, SettingsError, parse_storage_roots
from superollama.store import MEDIA_FILE, BlobStore, ModelStore, StorageRoots
from superollama.store.relocate import copy_blob


@pytest.fixture
def fast(tmp_path: Path) -> Path:
    path = tmp_path / "fast-disk"
    path.mkdir()
    return path


@pytest.fixture
def store(home: Path, fast: Path) -> ModelStore:
    return ModelStore(home, storage_roots=[("fast", str(fast))])


def _blob(root: Path, digest: str) -> Path:
    return root / "blobs" / ("sha256-" + digest.split(":", 1)[1])


def _left_in(root: Path) -> list[str]:
    """What a root still holds (the root itself must still be there)."""
    assert root.is_dir()
    return sorted(p.name for p in root.iterdir())


def test_the_setting_takes_named_and_unnamed_absolute_roots_only() -> None:
    assert parse_storage_roots(" fast=/mnt/nvme , /mnt/hdd,") == [("fast", "/mnt/nvme"), (None, "/mnt/hdd")]
    assert Settings(storage_roots="fast=/mnt/nvme").storage_root_specs == [("fast", "/mnt/nvme")]
    for bad, why in [
        ("fast=mnt/nvme", "absolute"),
        ("relative/dir", "absolute"),
        ("home=/mnt/nvme", "'home'"),
        ("Fast Disk=/mnt/nvme", "name"),
        ("a=/x,a=/y", "twice"),
        ("/x,/x", "twice"),
    ]:
        with pytest.raises(SettingsError, match=why):
            Settings(storage_roots=bad)


def test_only_declared_roots_are_destinations(home: Path, fast: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    undeclared = tmp_path / "undeclared"
    undeclared.mkdir()
    (tmp_path / "link-to-fast").symlink_to(fast)
    roots = StorageRoots(home, [("fast", str(fast)), (None, str(plain))])

    assert roots.resolve("home").is_home and roots.resolve(str(home)).is_home
    assert roots.resolve("fast").path == fast
    assert roots.resolve(str(fast) + "/").name == "fast"
    assert roots.resolve(str(tmp_path / "link-to-fast")).name == "fast"  # resolved before comparing
    assert roots.resolve(str(plain)).name == str(plain)  # an unnamed root: by its path

    escapes = f"{fast}/../../../etc"
    for bad in ["/etc", "/", "/root", "fast-disk", "./fast-disk", str(undeclared), escapes, ""]:
        with pytest.raises(InvalidRequest) as info:
            roots.resolve(bad)
        assert info.value.param == "to"
        assert f"valid roots: home ({home}), fast ({fast}), {plain}" in info.value.message, bad


def _mount_readonly(path: Path) -> bool:
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True, check=False
        )
    except OSError:
        return False
    return done.returncode == 0


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can write into: a read-only tmpfs as root, mode 0555 otherwise."""
    path = tmp_path / "readonly"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if not _mount_readonly(path):
        pytest.skip("running as root without the right to mount a read-only tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_an_unusable_root_is_reported_and_refused(home: Path, tmp_path: Path, readonly_dir: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    other_store = tmp_path / "other-store"
    (other_store / "manifests").mkdir(parents=True)
    roots = StorageRoots(
        home,
        [
            ("missing", str(tmp_path / "nope")),
            ("file", str(a_file)),
            ("ro", str(readonly_dir)),
            ("store", str(other_store)),
            ("itself", str(home)),
        ],
    )
    problems = {r.name: r.problem for r in roots.all()}
    assert problems == {
        "home": None,
        "missing": "it does not exist",
        "file": "it is not a directory",
        "ro": problems["ro"],
        "store": "it holds a manifests/ folder: another model store lives there",
        "itself": "it is the home, which is always the root 'home'",
    }
    assert problems["ro"] is not None and problems["ro"].startswith("it is not writable")
    for name in ("missing", "file", "ro", "store", "itself"):
        with pytest.raises(InvalidRequest, match=f"storage root '{name}' .* cannot be used"):
            roots.resolve(name)
    assert not list(readonly_dir.iterdir())  # the probe left nothing


async def test_move_to_a_root_and_back_home_leaves_nothing_behind(
    store: ModelStore, home: Path, fast: Path, smollm2_gguf: Path
) -> None:
    manifest = await store.pull(smollm2_gguf.as_uri(), "smol:1")
    digest = manifest.model_layer.digest
    reader = store.model_path("smol:1").open("rb")  # a running backend holding the file open
    events: list[Progress] = []

    result = await store.move("smol:1", "fast", on_progress=events.append)

    assert (result.root.name, result.source) == ("fast", "home")
    assert result.copied == result.freed == (digest,)
    assert store.show("smol:1").storage_root == fast
    assert store.model_path("smol:1") == _blob(fast, digest) and not _blob(fast, digest).is_symlink()
    assert not _blob(home, digest).exists()
    assert reader.read(4) == b"GGUF"  # the old inode stays readable for whoever has it open
    reader.close()
    assert events[-1].status == "success" and any(e.status.startswith("switching") for e in events)
    assert hashlib.sha256(store.model_path("smol:1").read_bytes()).hexdigest() == digest[7:]
    await store.verify("smol:1")

    again = await store.move("smol:1", str(fast))
    assert again.unchanged and again.copied == again.freed == ()

    back = await store.move("smol:1", "home")
    assert (back.source, back.root.name, back.freed) == ("fast", "home", (digest,))
    assert store.show("smol:1").storage_root is None
    assert store.model_path("smol:1") == _blob(home, digest)
    assert _left_in(fast) == []  # its blobs/ went with the last blob


async def test_moving_a_copy_leaves_the_original_where_it_is(
    store: ModelStore, home: Path, fast: Path, smollm2_gguf: Path
) -> None:
    digest = (await store.pull(smollm2_gguf.as_uri(), "smol:1")).model_layer.digest
    await store.copy("smol:1", "smol:2")
    original = _blob(home, digest)
    inode = original.stat().st_ino

    moved = await store.move("smol:2", "fast")
    assert (moved.copied, moved.freed, moved.kept) == ((digest,), (), (digest,))
    assert store.model_path("smol:1") == original and original.stat().st_ino == inode  # untouched
    assert store.model_path("smol:2") == _blob(fast, digest)

    follows = await store.move("smol:1", "fast")  # the blob is in fast already: no second copy
    assert (follows.copied, follows.freed) == ((), (digest,))
    assert not original.exists() and store.model_path("smol:1") == _blob(fast, digest)

    await store.move("smol:2", "home")
    assert store.model_path("smol:2") == original and _blob(fast, digest).is_file()  # smol:1 uses it

    assert await store.remove("smol:1") == {digest}
    assert _left_in(fast) == []  # rm of the last user in a root: blob and blobs/ gone
    assert await store.remove("smol:2") == {digest}
    assert list((home / "blobs").iterdir()) == []


async def test_rm_of_a_moved_version_leaves_no_blobs_dir(
    store: ModelStore, fast: Path, smollm2_gguf: Path
) -> None:
    await store.pull(smollm2_gguf.as_uri(), "smol:1")
    await store.move("smol:1", "fast")
    assert (fast / "blobs").is_dir()
    await store.remove("smol:1")
    assert _left_in(fast) == []


async def test_a_corrupt_blob_is_not_moved_and_leaves_no_copy(
    store: ModelStore, home: Path, fast: Path, smollm2_gguf: Path
) -> None:
    manifest = await store.pull(smollm2_gguf.as_uri(), "smol:1")
    blob = _blob(home, manifest.model_layer.digest)
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        await store.move("smol:1", "fast")
    assert store.show("smol:1").storage_root is None and blob.is_file()  # nothing switched
    assert _left_in(fast) == []  # no partial copy, no blobs/


async def test_a_move_to_an_undeclared_dir_writes_nothing(
    store: ModelStore, tmp_path: Path, smollm2_gguf: Path
) -> None:
    await store.pull(smollm2_gguf.as_uri(), "smol:1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for to in (str(elsewhere), "/etc", "elsewhere"):
        with pytest.raises(InvalidRequest, match="valid roots: home"):
            await store.move("smol:1", to)
    assert list(elsewhere.iterdir()) == [] and store.show("smol:1").storage_root is None


async def test_a_folder_version_is_rebuilt_from_its_new_root(
    store: ModelStore, home: Path, fast: Path
) -> None:
    files = {"config.json": b'{"model_type": "bert"}', "weights/model.safetensors": b"not really tensors"}
    layers = []
    for name, data in files.items():
        blob = await store.blobs.ingest([data])
        layers.append(Layer(media_type=MEDIA_FILE, digest=blob.digest, size=blob.size, filename=name))
    store.manifests.write(Manifest(name="folder:1", format="safetensors", layers=tuple(layers)))
    await store.copy("folder:1", "folder:2")
    before = store.model_dir("folder:1")
    assert store.model_dir("folder:2") == before  # same files, same root: one folder

    await store.move("folder:2", "fast")
    after = store.model_dir("folder:2")
    assert after != before and store.model_dir("folder:1") == before
    for layer in layers:
        assert layer.filename is not None
        assert (after / layer.filename).samefile(_blob(fast, layer.digest))
        assert (before / layer.filename).samefile(_blob(home, layer.digest))

    await store.remove("folder:2")
    assert not after.exists() and before.is_dir() and _left_in(fast) == []


async def test_a_blob_an_older_move_left_as_a_symlink_moves_and_its_target_goes(
    store: ModelStore, home: Path, fast: Path, tmp_path: Path, smollm2_gguf: Path
) -> None:
    """Before storage roots, a move left ``HOME/blobs/sha256-…`` as a symlink to the copy elsewhere."""
    digest = (await store.pull(smollm2_gguf.as_uri(), "smol:1")).model_layer.digest
    old_disk = tmp_path / "old-disk" / "blobs"
    old_disk.mkdir(parents=True)
    name = _blob(home, digest)
    name.rename(old_disk / name.name)
    name.symlink_to(old_disk / name.name)
    await store.verify("smol:1")

    result = await store.move("smol:1", "fast")
    assert result.freed == (digest,) and store.model_path("smol:1") == _blob(fast, digest)
    assert not name.exists() and not name.is_symlink() and _left_in(old_disk) == []


def test_a_stopped_copy_leaves_no_partial_file(home: Path, fast: Path, smollm2_gguf: Path) -> None:
    source = BlobStore(home)
    blob = asyncio.run(source.ingest(smollm2_gguf))
    stop = threading.Event()
    stop.set()
    with pytest.raises(StoreError, match="the move was stopped while copying"):
        copy_blob(source, BlobStore(fast), blob.digest, blob.size, lambda _p: None, stop=stop)
    assert _left_in(fast / "blobs") == []


async def test_gc_removes_a_crashed_moves_copy_at_once_and_keeps_a_fresh_download(
    store: ModelStore, home: Path, fast: Path
) -> None:
    """One purge for every root: a move's copy goes at once (moves run under the store's lock, as gc
    does), while a download's partial file stays until it is a day old (it may still be resumed)."""
    for root in (home, fast):
        blobs = BlobStore(root)
        blobs.dir.mkdir(parents=True, exist_ok=True)
        crashed_move = blobs.partial_path("move")
        crashed_move.write_bytes(b"half a copy")
        download = blobs.dir / "download-0123abcd.partial"
        download.write_bytes(b"resumable")
        old_download = blobs.dir / "download-4567ef01.partial"
        old_download.write_bytes(b"abandoned")
        two_days_ago = os.stat(old_download).st_mtime - 2 * 24 * 3600
        os.utime(old_download, (two_days_ago, two_days_ago))

        await store.gc()

        assert not crashed_move.exists(), root
        assert not old_download.exists(), root
        assert download.read_bytes() == b"resumable", root


async def test_a_root_shared_by_two_homes_serves_both_and_an_rm_keeps_the_others_files(
    store: ModelStore, tmp_path: Path, fast: Path, smollm2_gguf: Path
) -> None:
    """Two gateways' homes declaring one root (a disk both mount): the version moved there by one is
    found by the other from the catalog's digest, and the other's rm never sweeps it away."""
    from superollama.core import VersionRecord

    other_home = tmp_path / "other-home"
    other_home.mkdir()
    other = ModelStore(other_home, storage_roots=[("fast", str(fast))])
    manifest = await store.pull(smollm2_gguf.as_uri(), "smol:1")
    await store.move("smol:1", "fast")
    digest = manifest.model_layer.digest
    record = VersionRecord(
        name="smol:1", model="smol", tag="1", format="gguf", digest=digest, size=1, source="file"
    )

    found = other.shared_artifact(record)
    assert found is not None and found.path == _blob(fast, digest) and found.format == "gguf"
    assert other.shared_artifact(replace(record, metadata={"vision": True})) is None  # needs its projector
    assert ModelStore(tmp_path / "lone", storage_roots=[]).shared_artifact(record) is None

    await other.pull(smollm2_gguf.as_uri(), "mine:1")  # the other home's own version, then its rm
    await other.move("mine:1", "fast")
    assert await other.remove("mine:1", keep={digest}) == set()  # the first home's file stays
    assert store.model_path("smol:1") == _blob(fast, digest) and _blob(fast, digest).is_file()
    await other.pull(smollm2_gguf.as_uri(), "mine:2")
    assert await other.remove("mine:2") == {digest}  # without keep the sweep would take it (home + fast)
    assert not _blob(fast, digest).exists()
