"""Move a version's blobs to another storage root on this node with no downtime.

For each blob: copy it to ``DEST/blobs/sha256-…`` while hashing (the copy must match its digest), fsync,
then atomically replace the store's own name for it (``blobs/sha256-…``) with a symlink to the copy, then
delete the old bytes. A backend that has the old file open or mapped keeps reading the old inode until it
closes it; new loads open the new location. Garbage collection deletes a moved blob's target with it.

A node-to-node move is the same steps with the copy fetched from the other node's agent.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from superollama.core import Manifest, Progress
from superollama.errors import IntegrityError, InvalidRequest, StoreError
from superollama.store.blobs import BlobStore, normalize_digest

__all__ = ["relocate_blob", "relocate_manifest"]

_CHUNK = 4 * 1024 * 1024


def relocate_manifest(
    manifest: Manifest, blobs: BlobStore, dest_root: Path, emit: Callable[[Progress], None]
) -> list[str]:
    """Move every blob of ``manifest`` under ``dest_root`` (blocking); return the digests moved."""
    dest_root = dest_root.expanduser().resolve()
    if dest_root == blobs.root.resolve():
        raise InvalidRequest("the destination is the store itself", param="to")
    dest_dir = dest_root / "blobs"
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot use {dest_root} as a storage root: {exc}") from exc
    moved = []
    for layer in manifest.layers:
        if relocate_blob(blobs, layer.digest, dest_dir, layer.size, emit):
            moved.append(layer.digest)
    return moved


def relocate_blob(
    blobs: BlobStore, digest: str, dest_dir: Path, size: int, emit: Callable[[Progress], None]
) -> bool:
    """Move one blob into ``dest_dir``; False when it already lives there."""
    digest = normalize_digest(digest)
    name = blobs.path(digest)
    if not name.exists():
        raise IntegrityError(f"blob {digest} is missing")
    current = name.resolve()
    target = dest_dir / name.name
    if current == target.resolve():
        return False
    tmp = dest_dir / f".{name.name}.{uuid.uuid4().hex}.partial"
    h = hashlib.sha256()
    done = 0
    try:
        with current.open("rb") as src, tmp.open("wb") as out:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
                done += len(chunk)
                emit(Progress(f"moving {digest[7:19]}", digest=digest, total=size, completed=done))
            out.flush()
            os.fsync(out.fileno())
        if "sha256:" + h.hexdigest() != digest:
            raise IntegrityError(f"blob {digest} changed while it was being moved: the copy does not match")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    emit(Progress(f"switching {digest[7:19]}", digest=digest))
    link = name.with_name(f".{name.name}.{uuid.uuid4().hex}.link")
    os.symlink(target, link)
    os.replace(link, name)  # the switch: one atomic rename; readers see the old file or the new one
    if current != name:  # it had been moved before: its previous copy goes now
        current.unlink(missing_ok=True)
    return True
