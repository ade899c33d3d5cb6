"""Folder versions between nodes (no Ray here: ``cluster.agent`` and ``cluster.actors`` use it).

A folder version (a safetensors model, a sentence-transformers folder, a LoRA adapter) is one blob per
file in the store, and the runtime is given a directory built from them (``store/folders.py``:
``<home>/models/sha256-<key>/``, hard links to the blobs). A node with a store of its own gets the same:

- **The plan** (control plane, ``folder_plan``): the version's manifest, read from the home that built
  the folder the control plane's runtime would get, lists each file's path in the folder, digest and size,
  and where its blob lies (the origin the control plane's node actor serves). A folder no manifest of
  that home describes is refused: the files of a node must be verified against digests we recorded.
- **The files** travel one by one as blobs (``cluster/blobs.py``: chunked, each sha256-verified while it
  is written, renamed into ``blobs/`` only when it matches, resumable, one transfer per node and blob).
- **The folder** (node, ``assemble_folder``) is built only once every blob is in place: hard links
  (symlinks where links are refused) in ``tmp/models-<uuid>/``, renamed to ``models/<key>/`` in one step,
  so an instance never starts on half a folder. ``<key>`` is the store's own folder key (the sorted
  (path, digest) list), so two versions with the same files share one folder on the node too. A folder
  found there already is checked cheaply (each file is its blob: same inode, or a link to it) and rebuilt
  if it is not.
- **A derived folder** (``derived_folder_plan``): a folder no pull made and no manifest describes — a
  fine-tune's dequantised base (``metadata["hf_base"]``, ``<bases>/<sha256[:16]>/``) — is given one on
  demand, the first time a node needs it: each file is hashed into a blob store beside it
  (``<bases>/blobs/``, hard links: no second copy of the bytes) and the list is kept in
  ``<folder>.files.json``, reused while each file is still the one hashed (same inode, size and mtime).
  From there it travels like any folder version. On demand rather than when the fine-tune made it: the
  bases made before this existed need it too, one machine never pays for the hashing, and the digests
  certify the very bytes the control plane's own runtime would read.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from superollama.core import Layer, Manifest
from superollama.errors import IntegrityError, InvalidRequest, ModelNotFound, StoreError
from superollama.store.blobs import BlobStore, normalize_digest
from superollama.store.folders import MODELS_DIR, folder_key, is_folder
from superollama.store.manifests import ManifestStore
from superollama.store.sources.base import MEDIA_FILE, safe_relpath

__all__ = [
    "Entry",
    "FolderFile",
    "FolderPlan",
    "assemble_folder",
    "complete_folder",
    "derived_folder_plan",
    "folder_plan",
    "node_folder_key",
]

Entry = tuple[str, str, int]  # (path in the folder, digest, size): what a node is told of a file


@dataclass(frozen=True)
class FolderFile:
    path: str  # relative path inside the folder
    digest: str
    size: int
    origin: Path  # the control plane's blob file of it (``…/blobs/sha256-<hex>``), served by its origin


@dataclass(frozen=True)
class FolderPlan:
    """What a node needs to hold a folder version: its files, and the folder's name there."""

    version: str
    key: str  # ``sha256-<hex>``: the folder's name under the node's ``models/``
    files: tuple[FolderFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def entries(self) -> list[Entry]:
        return [(f.path, f.digest, f.size) for f in self.files]


def folder_plan(version: str, folder: Path) -> FolderPlan:
    """The plan of ``version``'s folder ``folder`` (``<home>/models/sha256-<key>``, what the control
    plane's store built): the version's manifest in that home, which must describe that very folder
    (blocking)."""
    home = folder.parent.parent
    if folder.parent.name != MODELS_DIR:
        raise StoreError(f"{version}: {folder} is not a folder of the store (not under {MODELS_DIR}/)")
    try:
        manifest = ManifestStore(home).read(version)
    except ModelNotFound:
        raise StoreError(f"{version}: no manifest of it in {home}, so its files cannot be verified") from None
    if not is_folder(manifest) or folder_key(manifest) != folder.name:
        raise StoreError(f"{version}: its manifest in {home} does not describe the folder {folder.name}")
    blobs = BlobStore(manifest.storage_root or home)
    files = tuple(
        FolderFile(safe_relpath(la.filename), normalize_digest(la.digest), la.size, blobs.path(la.digest))
        for la in manifest.layers
        if la.media_type == MEDIA_FILE and la.filename
    )
    return FolderPlan(version, node_folder_key((f.path, f.digest) for f in files), files)


FILES_SUFFIX = ".files.json"  # ``<folder>.files.json``: a derived folder's files, their digests and stats


async def derived_folder_plan(version: str, folder: Path) -> FolderPlan:
    """The plan of ``folder``, a folder no manifest describes (a fine-tune's dequantised base): its files
    hashed into the blob store of ``folder``'s parent once (hard links), the list kept beside it and
    reused while every file is still the one hashed. ``StoreError`` when it is not a folder."""
    listing = folder.with_name(folder.name + FILES_SUFFIX)
    blobs = BlobStore(folder.parent)
    files = await asyncio.to_thread(_current_files, folder)
    known = await asyncio.to_thread(_known_files, listing, blobs, files)
    if known is None:
        known = []
        for rel, (path, stat) in files.items():  # stat taken before the hashing: a file changed
            blob = await blobs.adopt(path)  # while it is hashed no longer matches, and is hashed again
            known.append({"path": rel, "digest": blob.digest, "size": blob.size, **_identity(stat)})
        await asyncio.to_thread(_write_json, listing, known)
    plan_files = tuple(
        FolderFile(str(f["path"]), str(f["digest"]), int(f["size"]), blobs.path(str(f["digest"])))
        for f in known
    )
    return FolderPlan(version, node_folder_key((f.path, f.digest) for f in plan_files), plan_files)


def _identity(stat: os.stat_result) -> dict[str, int]:
    return {"ino": stat.st_ino, "mtime_ns": stat.st_mtime_ns, "bytes": stat.st_size}


def _current_files(folder: Path) -> dict[str, tuple[Path, os.stat_result]]:
    if not folder.is_dir():
        raise StoreError(f"{folder} is not a folder on this machine")
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            found[safe_relpath(path.relative_to(folder).as_posix())] = (path, path.stat())
    return found


def _known_files(
    listing: Path, blobs: BlobStore, files: dict[str, tuple[Path, os.stat_result]]
) -> list[dict[str, Any]] | None:
    """The kept list when it still describes ``files`` exactly (the same files, each unchanged since it
    was hashed, its blob there), else None."""
    try:
        known = json.loads(listing.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(known, list) or not all(isinstance(f, dict) for f in known):
        return None
    if sorted(str(f.get("path")) for f in known) != sorted(files):
        return None
    for f in known:
        _path, stat = files[str(f["path"])]
        if {k: f.get(k) for k in ("ino", "mtime_ns", "bytes")} != _identity(stat):
            return None
        try:
            if blobs.size(str(f["digest"])) != int(f["size"]):
                return None
        except (KeyError, ValueError, TypeError, InvalidRequest):
            return None
    return known


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def node_folder_key(files: Iterable[tuple[str, str]]) -> str:
    """The folder's name on a node: the store's key of its (path, digest) list, without a storage root
    (a node has one store)."""
    layers = tuple(Layer(MEDIA_FILE, digest, 0, path) for path, digest in files)
    return folder_key(replace(_EMPTY, layers=layers))


_EMPTY = Manifest(name="folder", format="safetensors", layers=())


def complete_folder(root: Path, key: str, entries: Sequence[Entry]) -> Path | None:
    """``root/models/<key>`` when it is there and each of its files is the blob it should be (the same
    inode, or a link to it), else None (blocking)."""
    dest = root / MODELS_DIR / key
    if not dest.is_dir():
        return None
    blobs = BlobStore(root)
    for path, digest, _size in entries:
        try:
            if not os.path.samefile(dest / safe_relpath(path), blobs.path(digest)):
                return None
        except OSError:
            return None
    return dest


def assemble_folder(root: Path, key: str, entries: Sequence[Entry]) -> Path:
    """``root/models/<key>``, built from the blobs of ``entries`` in ``root``'s store once every one is
    there with its size (blocking). Built in ``tmp/`` and renamed: never a half folder under ``models/``.
    ``IntegrityError`` when a blob is missing or of another size, or ``key`` is not the entries' key."""
    if node_folder_key((p, d) for p, d, _ in entries) != key:
        raise IntegrityError(f"folder {key}: its files do not make that folder")
    done = complete_folder(root, key, entries)
    if done is not None:
        return done
    blobs = BlobStore(root)
    for path, digest, size in entries:
        try:
            got = blobs.path(digest).stat().st_size
        except OSError:
            raise IntegrityError(f"folder {key}: blob {digest} ({path}) is not on this node") from None
        if got != size:
            raise IntegrityError(f"folder {key}: blob {digest} ({path}) has {got} bytes, not {size}")
    dest = root / MODELS_DIR / key
    tmp = blobs.tmp_dir / f"models-{uuid.uuid4().hex}"
    stale = blobs.tmp_dir / f"models-stale-{uuid.uuid4().hex}"
    try:
        for path, digest, _size in entries:
            target = tmp / safe_relpath(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(blobs.path(digest), target)
            except OSError:
                os.symlink(blobs.path(digest), target)
        tmp.mkdir(parents=True, exist_ok=True)  # a folder of no files is still a folder
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir():  # there, but not made of these blobs (damaged): set aside, then replaced
            os.rename(dest, stale)
        try:
            os.rename(tmp, dest)
        except OSError:
            if complete_folder(root, key, entries) is None:  # not a lost race with another builder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
    return dest
