"""Copy a version's blobs into another storage root, verified, so the version can switch to them.

Blobs are content-addressed per root (``ROOT/blobs/sha256-…``). Moving a version is, in ``ModelStore``:
copy here each blob the destination root lacks (hashing while copying: the copy must match its digest;
fsync; one atomic rename into place), then rewrite the version's manifest to name the new root (the
switch), then garbage-collect the old root, where a blob goes only if no other version still uses it
there. So moving one version never moves another's files, and a backend that has the old file open or
mapped keeps reading the old inode until it closes it, while new loads open the new location.

A node-to-node move is the same steps with the copy fetched from the other node's agent.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable

from superollama.core import Manifest, Progress
from superollama.errors import IntegrityError, StoreError
from superollama.store.blobs import MOVE_STEM, BlobStore, normalize_digest, short_digest

__all__ = ["copy_blob", "copy_manifest_blobs"]

_CHUNK = 4 * 1024 * 1024


def copy_manifest_blobs(
    manifest: Manifest,
    src: BlobStore,
    dest: BlobStore,
    emit: Callable[[Progress], None],
    stop: threading.Event | None = None,
) -> list[str]:
    """Copy every blob of ``manifest`` that ``dest`` lacks from ``src`` (blocking); return the digests
    copied. A blob ``dest`` already holds (another version's, in that root) is used as it is. Setting
    ``stop`` ends the copy at the next chunk with ``StoreError`` (a cancelled move)."""
    copied: list[str] = []
    for layer in manifest.layers:
        if layer.digest in copied:
            continue
        if copy_blob(src, dest, layer.digest, layer.size, emit, stop=stop):
            copied.append(layer.digest)
        else:
            emit(Progress(f"{short_digest(layer.digest)} is there already", digest=layer.digest))
    return copied


def copy_blob(
    src: BlobStore,
    dest: BlobStore,
    digest: str,
    size: int,
    emit: Callable[[Progress], None],
    *,
    stop: threading.Event | None = None,
) -> bool:
    """Copy one blob from ``src`` to ``dest``, verified; False when ``dest`` has it already."""
    digest = normalize_digest(digest)
    if dest.has(digest):
        return False
    source = src.path(digest)
    if not source.is_file():
        raise IntegrityError(f"blob {digest} is missing ({source})")
    target = dest.path(digest)
    tmp = dest.partial_path(MOVE_STEM)
    h = hashlib.sha256()
    done = 0
    try:
        dest.dir.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as fin, tmp.open("xb") as out:
            while chunk := fin.read(_CHUNK):
                if stop is not None and stop.is_set():
                    raise StoreError(f"the move was stopped while copying blob {short_digest(digest)}")
                h.update(chunk)
                out.write(chunk)
                done += len(chunk)
                emit(Progress(f"copying {short_digest(digest)}", digest=digest, total=size, completed=done))
            out.flush()
            os.fsync(out.fileno())
        if "sha256:" + h.hexdigest() != digest:
            raise IntegrityError(f"blob {digest} does not match its digest: the copy was not kept")
        os.replace(tmp, target)
    except OSError as exc:
        raise StoreError(f"cannot copy blob {short_digest(digest)} into {dest.root}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return True
