"""Content-addressed blobs: ``<root>/blobs/sha256-<hex>``, written through ``blobs/*.partial`` files.

A blob lands under its name only after its bytes were hashed while being copied and matched what the caller
expected; the move is one atomic ``os.replace``. Partial files (``*.partial``, as Ollama keeps its
``-partial`` files) lie beside the blobs, so they are on the blobs' filesystem whatever the layout
(``blobs/`` may be a mount point of its own) and that move never crosses devices. File I/O and hashing run
in worker threads, in chunks, so the event loop stays free. Digests are written ``sha256:<hex>``
(``sha256-<hex>`` is accepted too).

A local, immutable file (an Ollama blob) can be *adopted* instead: hard-linked beside the blobs as a
partial file, hashed there, then moved into place, so no second copy of its bytes is written.

Pins protect blobs that an operation in this process is about to reference (a pull between its ingest and
its manifest write) from garbage collection: ``delete`` skips a pinned blob unless forced.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from superollama.errors import IntegrityError, InvalidRequest

__all__ = ["CHUNK_SIZE", "Blob", "BlobStore", "hash_file", "normalize_digest", "read_chunks", "short_digest"]

CHUNK_SIZE = 4 * 1024 * 1024
PARTIAL_SUFFIX = ".partial"
MOVE_STEM = "move"  # partial files of a blob being copied between roots (store/relocate.py)
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_BLOB_NAME = re.compile(r"^sha256-[0-9a-f]{64}$")
log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]
ChunkSource = str | os.PathLike[str] | AsyncIterable[bytes] | Iterable[bytes]


def normalize_digest(digest: str) -> str:
    """``sha256:<hex>`` for a digest written either way; ``InvalidRequest`` for anything else."""
    m = _DIGEST.match(digest.strip().lower())
    if m is None:
        raise InvalidRequest(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return f"sha256:{m.group(1)}"


def short_digest(digest: str) -> str:
    """The 12 first hex digits, as Ollama shows them (``pulling 6a0746a1ec1a``)."""
    return normalize_digest(digest).split(":", 1)[1][:12]


@dataclass(frozen=True)
class Blob:
    """A stored blob: what a manifest layer needs (digest, size) and where it lies."""

    digest: str
    size: int
    path: Path


async def read_chunks(path: Path, chunk_size: int = CHUNK_SIZE) -> AsyncGenerator[bytes, None]:
    """Stream a file's bytes, each read in a worker thread."""
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, chunk_size):
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


async def hash_file(path: Path, on_progress: ProgressFn | None = None) -> tuple[str, int]:
    """``(sha256:<hex>, size)`` of a file, hashed in chunks off the event loop."""
    h = hashlib.sha256()
    n = 0
    async with aclosing(read_chunks(path)) as chunks:
        async for chunk in chunks:
            await asyncio.to_thread(h.update, chunk)
            n += len(chunk)
            if on_progress is not None:
                on_progress(n)
    return f"sha256:{h.hexdigest()}", n


async def _batched(source: ChunkSource, size: int) -> AsyncGenerator[bytes, None]:
    """Chunks of about ``size`` bytes from a path, an async or a sync iterable of bytes."""
    if isinstance(source, str | os.PathLike):
        async with aclosing(read_chunks(Path(source), size)) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    buf = bytearray()
    if isinstance(source, AsyncIterable):
        async for piece in source:
            buf += piece
            if len(buf) >= size:
                yield bytes(buf)
                buf.clear()
    else:
        for piece in source:
            buf += piece
            if len(buf) >= size:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)


class BlobStore:
    """The ``blobs/`` folder of a store root."""

    def __init__(self, root: str | os.PathLike[str], *, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = Path(root)
        self.dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"  # scratch space of the root (manifests, folder builds)
        self.partial_dir = self.dir  # partial blobs (*.partial) lie beside the blobs, on their filesystem
        self.chunk_size = chunk_size
        self._lock = threading.Lock()
        self._pins: Counter[str] = Counter()

    # -- lookup ---------------------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        return self.dir / normalize_digest(digest).replace(":", "-", 1)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def iter_digests(self) -> Iterator[str]:
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return
        for entry in entries:
            if _BLOB_NAME.match(entry.name) and entry.is_file():
                yield entry.name.replace("-", ":", 1)

    def free_space(self) -> tuple[int, Path]:
        """Free bytes on the filesystem that holds (or will hold) ``blobs/``, and the folder measured."""
        where = self.dir
        while not where.exists() and where != where.parent:
            where = where.parent
        return shutil.disk_usage(where).free, where

    def disk_usage(self) -> int:
        """Bytes held by the blobs (partial downloads not included)."""
        total = 0
        for digest in self.iter_digests():
            total += self.size(digest) or 0
        return total

    # -- pins -----------------------------------------------------------------------------------------
    def pin(self, digest: str) -> None:
        with self._lock:
            self._pins[normalize_digest(digest)] += 1

    def unpin(self, digest: str) -> None:
        d = normalize_digest(digest)
        with self._lock:
            self._pins[d] -= 1
            if self._pins[d] <= 0:
                del self._pins[d]

    def is_pinned(self, digest: str) -> bool:
        with self._lock:
            return self._pins[normalize_digest(digest)] > 0

    # -- removal --------------------------------------------------------------------------------------
    def delete(self, digest: str, *, force: bool = False) -> bool:
        """Remove a blob; False when it was absent or is pinned (and not ``force``)."""
        path = self.path(digest)
        with self._lock:
            if not force and self._pins[normalize_digest(digest)] > 0:
                return False
            target = path.resolve() if path.is_symlink() else None  # moved to another storage root
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            if target is not None:
                target.unlink(missing_ok=True)
        return True

    def partial_path(self, stem: str) -> Path:
        """A fresh name for a partial file beside the blobs: ``<stem>-<random>.partial``. A writer that
        crashes leaves it there for ``purge_tmp``."""
        return self.partial_dir / f"{stem}-{uuid.uuid4().hex}{PARTIAL_SUFFIX}"

    def purge_tmp(self, older_than_s: float = 24 * 3600) -> int:
        """Remove files left in ``tmp/`` and ``*.partial`` files beside the blobs by crashed writers (or
        interrupted downloads nobody resumed); return how many went. A move's copy (``move-*.partial``)
        goes whatever its age: moves run under the store's lock, which the caller (``gc``) holds, so
        none is being written."""
        cutoff = time.time() - older_than_s
        removed = 0
        entries: list[os.DirEntry[str]] = []
        for folder, partial_only in ((self.tmp_dir, False), (self.partial_dir, True)):
            try:
                entries += [e for e in os.scandir(folder) if not partial_only or _is_partial(e.name)]
            except FileNotFoundError:
                continue
        for entry in entries:
            try:
                if entry.is_file() and (
                    entry.name.startswith(MOVE_STEM + "-") or entry.stat().st_mtime < cutoff
                ):
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    # -- integrity ------------------------------------------------------------------------------------
    async def verify(
        self, digest: str, *, size: int | None = None, on_progress: ProgressFn | None = None
    ) -> None:
        """Re-hash a stored blob; ``IntegrityError`` if it is missing, of the wrong size or corrupt."""
        want = normalize_digest(digest)
        path = self.path(want)
        actual_size = self.size(want)
        if actual_size is None:
            raise IntegrityError(f"blob {want} is missing ({path})")
        if size is not None and actual_size != size:
            raise IntegrityError(f"blob {want} has {actual_size} bytes, expected {size}")
        got, _ = await hash_file(path, on_progress)
        if got != want:
            raise IntegrityError(f"blob {want} is corrupt: its bytes hash to {got}")

    # -- ingest ---------------------------------------------------------------------------------------
    async def ingest(
        self,
        data: ChunkSource,
        *,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        on_progress: ProgressFn | None = None,
        pin: bool = False,
    ) -> Blob:
        """Store bytes (a file path, or an async/sync iterable of chunks) as a blob, hashing while copying.

        A digest or size mismatch raises ``IntegrityError`` and leaves nothing behind. When the blob is
        already stored, the incoming bytes are still hashed and checked, but not written again. With
        ``pin``, the returned blob is pinned (the caller must ``unpin`` it) so no GC removes it meanwhile.
        """
        expected = normalize_digest(expected_digest) if expected_digest else None
        if expected and pin:
            self.pin(expected)
        try:
            blob = await self._ingest(data, expected, expected_size, on_progress, pin and not expected)
        except BaseException:
            if expected and pin:
                self.unpin(expected)
            raise
        return blob

    async def _ingest(
        self,
        data: ChunkSource,
        expected: str | None,
        expected_size: int | None,
        on_progress: ProgressFn | None,
        pin_on_commit: bool,
    ) -> Blob:
        # Already stored and pinned by digest: hash the incoming bytes only, write nothing.
        write = not (expected and self.has(expected))
        tmp: Path | None = None
        f: BinaryIO | None = None
        if write:
            tmp = self.partial_path((expected or "sha256:unknown").replace(":", "-"))
            f = await asyncio.to_thread(_open_new, tmp)
        h = hashlib.sha256()
        n = 0
        try:
            async with aclosing(_batched(data, self.chunk_size)) as chunks:
                async for chunk in chunks:
                    n += len(chunk)
                    if expected_size is not None and n > expected_size:
                        raise IntegrityError(
                            f"blob {expected or ''} is over the expected {expected_size} bytes"
                        )
                    await asyncio.to_thread(_consume, h, f, chunk)
                    if on_progress is not None:
                        on_progress(n)
            digest = f"sha256:{h.hexdigest()}"
            if expected_size is not None and n != expected_size:
                raise IntegrityError(f"blob {expected or digest} has {n} bytes, expected {expected_size}")
            if expected is not None and digest != expected:
                raise IntegrityError(f"blob {expected}: the received bytes hash to {digest}")
            if f is not None and tmp is not None:
                await asyncio.to_thread(self._commit, f, tmp, digest, pin_on_commit)
                f = tmp = None
            elif pin_on_commit:
                self.pin(digest)
        finally:
            if f is not None:
                await asyncio.to_thread(_close_quietly, f)  # a full disk fails the flush: drop it anyway
            if tmp is not None:
                await asyncio.to_thread(tmp.unlink, True)
        return Blob(digest=digest, size=n, path=self.path(digest))

    def _commit(self, f: BinaryIO, tmp: Path, digest: str, pin: bool) -> None:
        """Flush the temp file and move it into ``blobs/`` (thread). Same bytes there already: drop ours."""
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()
        self.place(tmp, digest, pin=pin)

    def place(self, tmp: Path, digest: str, *, pin: bool = False) -> Blob:
        """Move a complete, verified file (a flushed partial file beside the blobs) to its blob path,
        atomically (blocking).

        The caller has checked that ``tmp`` hashes to ``digest``. Same bytes stored already: drop ``tmp``.
        """
        digest = normalize_digest(digest)
        dest = self.path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if pin:
                self._pins[digest] += 1
            if dest.is_file():
                tmp.unlink(missing_ok=True)
            else:
                os.replace(tmp, dest)
        return Blob(digest=digest, size=dest.stat().st_size, path=dest)

    # -- adopt (hard link) ----------------------------------------------------------------------------
    async def adopt(
        self,
        path: str | os.PathLike[str],
        *,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        on_progress: ProgressFn | None = None,
        pin: bool = False,
    ) -> Blob:
        """Store an immutable local file as a blob by hard-linking it (no second copy of its bytes).

        The link is made first and its bytes hashed and checked, so what was verified is what is kept.
        On another filesystem (or where links are refused) this falls back to a copy, with a log note.
        """
        expected = normalize_digest(expected_digest) if expected_digest else None
        tmp = self.partial_path("link")
        try:
            await asyncio.to_thread(_link, Path(path), tmp)
        except OSError as exc:
            log.warning("cannot hard-link %s into %s (%s): copying it instead", path, self.dir, exc)
            return await self.ingest(
                path, expected_digest=expected, expected_size=expected_size, on_progress=on_progress, pin=pin
            )
        try:
            digest, size = await hash_file(tmp, on_progress)
            if expected_size is not None and size != expected_size:
                raise IntegrityError(f"blob {expected or digest} has {size} bytes, expected {expected_size}")
            if expected is not None and digest != expected:
                raise IntegrityError(f"blob {expected}: the bytes of {path} hash to {digest}")
            return await asyncio.to_thread(self.place, tmp, digest, pin=pin)
        finally:
            await asyncio.to_thread(tmp.unlink, True)


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dest)


def _open_new(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("xb")


def _is_partial(name: str) -> bool:
    return name.endswith(PARTIAL_SUFFIX) and not _BLOB_NAME.match(name)


def _close_quietly(f: BinaryIO) -> None:
    """Close a file being abandoned: a flush that fails (no space left) must not keep it on disk."""
    try:
        f.close()
    except OSError as exc:
        log.debug("closing an abandoned partial file: %s", exc)


def _consume(h: hashlib._Hash, f: BinaryIO | None, chunk: bytes) -> None:
    h.update(chunk)
    if f is not None:
        f.write(chunk)
