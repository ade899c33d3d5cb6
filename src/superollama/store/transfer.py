"""Fetching planned files into the blob store: one download per blob, resumable, verified.

``Transfers.fetch`` is what a pull calls for each file of its plan. It

- skips a blob already stored (known digest and size);
- runs **one flight per blob**: a second pull of the same digest (or the same URL and ETag) while the first
  is under way waits for it and shares its progress instead of downloading the bytes again;
- for a ``LinkableSource``, hard-links the local file (``BlobStore.adopt``);
- for a ``RangedSource`` whose file has a digest or a validator (ETag), downloads into a partial file
  ``blobs/download-<key>.partial`` (beside the blobs, on their filesystem) that survives an interruption:
  a lost connection is retried with backoff from the byte where it stopped (until ``RetryPolicy.stall``
  seconds pass without a new byte), and a later pull (after a crash or a cancel) resumes it too;
- otherwise streams ``Source.open`` through ``BlobStore.ingest``.

Every path hashes the bytes it keeps and checks them against the plan's digest and size before the blob is
moved into ``blobs/``; a mismatch is ``IntegrityError`` and the partial file is dropped.

Disk space: ``check_space`` refuses a plan whose known sizes (less what is stored or partly downloaded
already) do not fit on the blobs' filesystem with a small margin; a write that fails for lack of space
(``ENOSPC``) drops its partial file, so the disk is usable again, and is ``InsufficientStorage``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from superollama.errors import InsufficientStorage, IntegrityError, StoreError, Unavailable
from superollama.store.blobs import Blob, BlobStore, normalize_digest
from superollama.store.sources._http import stalled
from superollama.store.sources.base import LinkableSource, RangedSource, RetryPolicy, Source, SourceFile

__all__ = ["SPACE_MARGIN", "Transfers", "human_bytes", "os_error", "partial_key"]

ProgressFn = Callable[[int], None]
Sleep = Callable[[float], Awaitable[None]]
SPACE_MARGIN = 16 * 2**20  # bytes kept free beyond a download: manifests, the registry's journal, logs
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
log = logging.getLogger(__name__)


def human_bytes(n: int) -> str:
    """``98.6 MB``: sizes in messages, in the decimal units the CLI shows."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def os_error(exc: OSError, what: str, blobs: BlobStore) -> StoreError:
    """An OS error of a store operation in our tree: a full disk is ``InsufficientStorage``, anything else
    a ``StoreError`` that names the file, never a bare ``OSError``. (By the time this is raised, the partial
    file of the failed write is gone.)"""
    if exc.errno in _NO_SPACE:
        return InsufficientStorage(
            f"{what}: no space left on the filesystem of {blobs.dir}: the download stopped and its "
            "partial file was removed"
        )
    where = f" ({exc.filename})" if exc.filename else ""
    return StoreError(f"{what}: {exc.strerror or exc}{where}")


def partial_key(file: SourceFile) -> str | None:
    """What names a file's bytes for sharing a flight and resuming: its digest, else URL + validator."""
    if file.digest:
        return normalize_digest(file.digest).replace(":", "-")
    if file.validator:
        h = hashlib.sha256(f"{file.location}\n{file.validator}".encode()).hexdigest()
        return f"url-{h[:32]}"
    return None


@asynccontextmanager
async def _closing(stream: AsyncIterator[bytes]) -> AsyncGenerator[AsyncIterator[bytes], None]:
    """Close a source's stream (an async generator holding a file or a connection) however we leave."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class _Flight:
    task: asyncio.Task[Blob] | None = None
    listeners: list[ProgressFn] = field(default_factory=list)

    def emit(self, done: int) -> None:
        for listener in list(self.listeners):
            listener(done)


class Transfers:
    """Single-flight, resumable fetching of planned files into one ``BlobStore``."""

    def __init__(self, blobs: BlobStore, *, retry: RetryPolicy | None = None, sleep: Sleep | None = None):
        self.blobs = blobs
        self.retry = retry or RetryPolicy()
        self._sleep = sleep or asyncio.sleep
        self._flights: dict[str, _Flight] = {}

    async def fetch(self, source: Source, file: SourceFile, on_progress: ProgressFn) -> Blob:
        """Store ``file`` as a verified blob and return it **pinned** (the caller unpins it)."""
        if file.digest:
            stored = self._stored(file.digest, file.size)
            if stored is not None:
                on_progress(stored.size)
                return stored
        key = partial_key(file)
        if key is None:
            return await self._run(source, file, None, on_progress)
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight()
            flight.task = asyncio.create_task(self._run(source, file, key, flight.emit))
            self._flights[key] = flight
        task = flight.task
        assert task is not None
        flight.listeners.append(on_progress)
        try:
            blob = await asyncio.shield(task)
            self.blobs.pin(blob.digest)
            return blob
        except asyncio.CancelledError:
            if len(flight.listeners) == 1 and not task.done():  # the last one waiting: stop the download
                task.cancel()
                await asyncio.wait({task})
            raise
        finally:
            flight.listeners.remove(on_progress)
            if not flight.listeners:
                if self._flights.get(key) is flight:
                    del self._flights[key]
                if task.done() and not task.cancelled() and task.exception() is None:
                    self.blobs.unpin(task.result().digest)  # the flight's own pin

    async def check_space(self, source: Source, files: Iterable[SourceFile]) -> None:
        """``InsufficientStorage`` ("needs X, Y free on PATH") when the files of a plan whose sizes are
        known cannot fit; files stored already, partly downloaded or linked count what they still need."""
        need = await asyncio.to_thread(self._bytes_needed, source, list(files))
        if need <= 0:
            return
        free, where = await asyncio.to_thread(self.blobs.free_space)
        if need + SPACE_MARGIN > free:
            raise InsufficientStorage(
                f"not enough disk space: the download needs {human_bytes(need)} "
                f"(+{human_bytes(SPACE_MARGIN)} margin), {human_bytes(free)} free on {where}"
            )

    def _bytes_needed(self, source: Source, files: list[SourceFile]) -> int:
        need = 0
        for file in files:
            if file.size is None or (file.digest and self.blobs.has(file.digest)):
                continue
            if isinstance(source, LinkableSource) and self._links(source.linkable(file)):
                continue
            key = partial_key(file)
            have = 0
            if key is not None:
                with contextlib.suppress(OSError):
                    have = (self.blobs.partial_dir / f"download-{key}.partial").stat().st_size
            need += max(0, file.size - have)
        return need

    def _links(self, local: Path | None) -> bool:
        """Whether a local file can be hard-linked into the blobs (same filesystem): it costs no space."""
        if local is None:
            return False
        try:
            where = self.blobs.free_space()[1]
            return local.stat().st_dev == where.stat().st_dev
        except OSError:
            return False

    def _stored(self, digest: str, size: int | None) -> Blob | None:
        """The stored blob, pinned, when it is already there with the expected size."""
        self.blobs.pin(digest)
        have = self.blobs.size(digest)
        if have is not None and (size is None or have == size):
            return Blob(digest=normalize_digest(digest), size=have, path=self.blobs.path(digest))
        self.blobs.unpin(digest)
        return None

    async def _run(self, source: Source, file: SourceFile, key: str | None, emit: ProgressFn) -> Blob:
        try:
            return await self._store(source, file, key, emit)
        except OSError as exc:  # a full disk, a read-only one …: our error, and nothing left behind
            raise os_error(exc, file.filename, self.blobs) from exc

    async def _store(self, source: Source, file: SourceFile, key: str | None, emit: ProgressFn) -> Blob:
        emit(0)
        if isinstance(source, LinkableSource):
            local = source.linkable(file)
            if local is not None:
                return await self.blobs.adopt(
                    local, expected_digest=file.digest, expected_size=file.size, on_progress=emit, pin=True
                )
        if key is not None and isinstance(source, RangedSource):
            return await self._download(source, file, key, emit)
        async with _closing(source.open(file)) as stream:
            return await self.blobs.ingest(
                stream, expected_digest=file.digest, expected_size=file.size, on_progress=emit, pin=True
            )

    # -- resumable download ---------------------------------------------------------------------------
    async def _download(self, source: RangedSource, file: SourceFile, key: str, emit: ProgressFn) -> Blob:
        path = self.blobs.partial_dir / f"download-{key}.partial"
        await asyncio.to_thread(_adopt_legacy, self.blobs.tmp_dir / path.name, path)
        part = await asyncio.to_thread(_Partial.open, path, file.size)
        try:
            attempt = 0
            progressed_at, progressed = time.monotonic(), part.size
            while file.size is None or part.size < file.size:
                try:
                    await self._receive(source, file, part, emit)
                    break
                except Unavailable as exc:
                    if part.size > progressed:  # new bytes arrived: the deadline starts again
                        progressed_at, progressed, attempt = time.monotonic(), part.size, 0
                    attempt += 1
                    if attempt > self.retry.attempts:
                        raise
                    idle = time.monotonic() - progressed_at
                    if idle + self.retry.delay(attempt) >= self.retry.stall:
                        raise stalled(exc, idle) from exc
                    await self._sleep(self.retry.delay(attempt))
            digest = f"sha256:{part.hash.hexdigest()}"
            if file.size is not None and part.size != file.size:
                raise IntegrityError(f"{file.filename}: got {part.size} bytes, expected {file.size}")
            if file.digest and digest != normalize_digest(file.digest):
                raise IntegrityError(f"{file.filename}: the bytes hash to {digest}, expected {file.digest}")
            await asyncio.to_thread(part.finish)
            return await asyncio.to_thread(self.blobs.place, part.path, digest, pin=True)
        except IntegrityError:
            await asyncio.to_thread(part.discard)
            raise
        except OSError as exc:
            if exc.errno in _NO_SPACE:  # kept, it would hold the disk full: start over next time
                await asyncio.to_thread(part.discard)
            raise
        finally:
            await asyncio.to_thread(part.close)

    async def _receive(
        self, source: RangedSource, file: SourceFile, part: _Partial, emit: ProgressFn
    ) -> None:
        async with source.open_at(file, part.size) as body:
            if body.offset != part.size:
                if body.offset != 0:
                    raise StoreError(f"{file.location}: asked for bytes from {part.size}, got {body.offset}")
                await asyncio.to_thread(part.reset)  # the file changed, or no ranges there: start over
            emit(part.size)
            # Double-buffered: a worker thread hashes and writes one chunk while the next one arrives.
            received = part.size
            buf = bytearray()
            writing: asyncio.Future[None] | None = None
            try:
                async with aclosing(_pieces(body.chunks)) as pieces:
                    async for piece in pieces:
                        received += len(piece)
                        if file.size is not None and received > file.size:
                            raise IntegrityError(f"{file.filename}: over the expected {file.size} bytes")
                        buf += piece
                        if len(buf) >= self.blobs.chunk_size:
                            if writing is not None:
                                await writing
                                emit(part.size)
                            writing = asyncio.ensure_future(asyncio.to_thread(part.write, buf))
                            buf = bytearray()
            finally:
                if writing is not None:
                    await asyncio.shield(writing)
                if buf:  # what arrived before a failure is kept for the resume
                    await asyncio.to_thread(part.write, buf)
                emit(part.size)


def _adopt_legacy(old: Path, new: Path) -> None:
    """A partial download kept in ``tmp/`` by an earlier version: move it beside the blobs to resume it
    (left alone when it lies on another filesystem: ``gc`` purges it once stale)."""
    if new.exists() or not old.is_file():
        return
    new.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(old, new)
    except OSError as exc:
        log.info("not resuming %s: %s", old, exc)


def _try_lock(f: BinaryIO) -> bool:
    try:
        import fcntl
    except ImportError:  # not on a POSIX system: no cross-process guard
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def _pieces(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    async with _closing(chunks) as stream:
        async for piece in stream:
            yield piece


class _Partial:
    """A partial download on disk and the running hash of its bytes (blocking methods: call in a thread)."""

    def __init__(self, path: Path, f: BinaryIO) -> None:
        self.path = path
        self.f = f
        self.hash = hashlib.sha256()
        self.size = 0

    @classmethod
    def open(cls, path: Path, limit: int | None) -> _Partial:
        """Open (or create) ``path`` and hash what it already holds; drop it if it is over ``limit``.

        The file is locked (``flock``) while open: another process downloading the same bytes into the same
        root gets a private file instead of writing into this one.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
        if not _try_lock(f):
            f.close()
            path = path.with_name(f"{path.stem}-{uuid.uuid4().hex}.partial")
            f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), "r+b")
        part = cls(path, f)
        while chunk := part.f.read(1 << 22):
            part.hash.update(chunk)
            part.size += len(chunk)
        if limit is not None and part.size > limit:
            part.reset()
        return part

    def reset(self) -> None:
        self.f.seek(0)
        self.f.truncate()
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray) -> None:
        self.f.write(data)
        self.hash.update(data)
        self.size += len(data)

    def finish(self) -> None:
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
        finally:
            self.f.close()

    def close(self) -> None:
        """Close (after ``discard`` too); a flush that fails for lack of space loses only unsaved bytes."""
        try:
            self.f.close()
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            log.debug("closing %s: %s", self.path, exc)

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
