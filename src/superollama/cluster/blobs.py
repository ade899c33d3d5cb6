"""Blob transfer between nodes, the node's side (no Ray here: ``cluster.actors`` wires it to Ray).

A node started with ``SUPEROLLAMA_NODE_STORE=DIR`` keeps the blobs its instances run from in a store of
its own (``DIR/blobs/sha256-<hex>``, the store's layout); a node without it reads the control plane's own
files (one machine, or a filesystem the nodes share). When placement picks a node with a store of its own
that lacks a version's blobs, the node's ``NodeBlobs.fetch`` copies each one from a ``BlobSource``: another
node's store, or the control plane's (its origin).

- **Streamed in chunks**: at most ``window`` chunks of ``chunk_size`` bytes are asked for ahead of the
  one being written (``window x chunk_size`` bytes in memory at most, never the whole file); each chunk is
  hashed and appended to ``blobs/transfer-<hex>.partial`` in order.
- **Verified before it is visible**: once every byte is there, the sha256 of what was written must be
  the digest; the partial file is then flushed, fsynced and renamed to its blob name (``BlobStore.place``:
  one atomic ``os.replace``). A mismatch is refused (``IntegrityError``, naming the source node and both
  digests) and the partial file is removed: nothing half-copied or corrupt is ever listed.
- **Retried and resumed**: a chunk read that fails is retried ``attempts`` times with a growing delay;
  then the next source continues from the same offset. A transfer that fails altogether keeps its partial
  file: the next fetch re-hashes it and asks only for the rest (one nobody resumes for a day is removed
  when the node's actor starts).
- **Single flight**: concurrent fetches of the same blob on one node share one transfer.
- **Progress**: ``report()`` lists the transfers in progress (bytes done of total, source) and the last
  ones finished (source, bytes, seconds, resumed from), for the node's inventory.
- **Folder versions** (``cluster/folders.py``): each file travels as a blob like any other; ``assemble``
  then builds the version's folder from them in one rename, only once every one is here (``folder``:
  the folder when it is complete already), and lists it with the last folder copies (``folders``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from superollama.cluster.folders import Entry, assemble_folder, complete_folder
from superollama.errors import IntegrityError, InvalidRequest, StoreError
from superollama.store.blobs import BlobStore, normalize_digest

__all__ = [
    "NODE_STORE_ENV",
    "BlobSource",
    "NodeBlobs",
    "TransferFailed",
    "blob_digest",
    "read_blob_chunk",
]

log = logging.getLogger("superollama.cluster")

NODE_STORE_ENV = "SUPEROLLAMA_NODE_STORE"
CHUNK_SIZE = 8 * 1024 * 1024
WINDOW = 4
_RECENT = 20

ChunkReader = Callable[[int, int], Awaitable[bytes]]  # (offset, length) → those bytes


class TransferFailed(StoreError):
    """No source could send a blob (each one's reason is in the message); what arrived is kept."""


@dataclass(frozen=True)
class BlobSource:
    name: str  # the node it comes from, for progress and errors
    read: ChunkReader


def blob_digest(path: Path) -> str | None:
    """The digest a blob file is named after (``.../blobs/sha256-<hex>``), or None for another file."""
    if path.parent.name != "blobs":
        return None
    try:
        return normalize_digest(path.name)
    except InvalidRequest:
        return None


def read_blob_chunk(path: Path, digest: str, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of a blob file (blocking). Only a file named after ``digest`` in a
    ``blobs`` folder is served: a chunk reader is not a way to read any file of the node."""
    if blob_digest(path) != normalize_digest(digest):
        raise StoreError(f"{path} is not the blob {digest}")
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


class _Partial:
    """``transfer-<hex>.partial`` and the running sha256 of its bytes (blocking: call in a thread)."""

    def __init__(self, path: Path, limit: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.f: BinaryIO = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
        self.hash = hashlib.sha256()
        self.size = 0
        while chunk := self.f.read(CHUNK_SIZE):  # what an earlier, interrupted transfer left: resumed
            self.hash.update(chunk)
            self.size += len(chunk)
        if self.size > limit:
            self.f.seek(0)
            self.f.truncate()
            self.hash, self.size = hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.hash.update(data)
        self.size += len(data)

    def finish(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.f.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class NodeBlobs:
    """The blobs of one node: its own store (``root``) or, with None, the control plane's files."""

    def __init__(
        self,
        root: Path | None,
        *,
        chunk_size: int = CHUNK_SIZE,
        window: int = WINDOW,
        attempts: int = 3,
        retry_delay: float = 0.5,
        chunk_timeout: float = 60.0,
    ) -> None:
        self.store = BlobStore(root) if root is not None else None
        if self.store is not None:  # transfers nobody resumed for a day are dropped
            self.store.purge_tmp()
        self.chunk_size = chunk_size
        self.window = max(1, window)
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.chunk_timeout = chunk_timeout
        self.transfers = 0  # transfers started (a fetch that joins one in flight starts none)
        self._flights: dict[str, asyncio.Task[Path]] = {}
        self._progress: dict[str, dict[str, Any]] = {}
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=_RECENT)
        self._folders: collections.deque[dict[str, Any]] = collections.deque(maxlen=_RECENT)

    @property
    def root(self) -> Path | None:
        return self.store.root if self.store is not None else None

    def local(self, digest: str, shared: str | None = None) -> tuple[str, int] | None:
        """(path, size) of the blob here: in this node's store, or, for a node without one, the control
        plane's file ``shared`` when this node can read it. None when it is not here."""
        if self.store is not None:
            path = self.store.path(digest)
        elif shared is not None and blob_digest(Path(shared)) == normalize_digest(digest):
            path = Path(shared)
        else:
            return None
        try:
            return str(path), path.stat().st_size
        except OSError:
            return None

    def read(self, digest: str, shared: str | None, offset: int, length: int) -> bytes:
        found = self.local(digest, shared)
        if found is None:
            raise StoreError(f"blob {digest} is not on this node")
        return read_blob_chunk(Path(found[0]), digest, offset, length)

    def report(self) -> dict[str, Any]:
        return {
            "root": str(self.root) if self.root is not None else None,
            "transfers": self.transfers,
            "in_progress": [dict(p) for p in self._progress.values()],
            "recent": list(self._recent),
            "folders": list(self._folders),
            "pid": os.getpid(),  # the process that holds the store and serves its chunks
        }

    def folder(self, key: str, entries: Sequence[Entry]) -> str | None:
        """The folder ``models/<key>`` of this node's store when it is complete (blocking); else None."""
        if self.store is None:
            return None
        found = complete_folder(self.store.root, key, entries)
        return None if found is None else str(found)

    def assemble(self, key: str, entries: Sequence[Entry], summary: dict[str, Any]) -> str:
        """Build the folder ``models/<key>`` from its blobs, all here and verified (blocking); ``summary``
        (the version, files and bytes copied, seconds) goes to the recent folder copies."""
        if self.store is None:
            raise StoreError("this node has no store of its own: it reads the control plane's files")
        path = assemble_folder(self.store.root, key, entries)
        self._folders.append(
            {"folder": key, "files": len(entries), "bytes": sum(e[2] for e in entries), **summary}
        )
        return str(path)

    async def fetch(self, digest: str, size: int, sources: Sequence[BlobSource]) -> Path:
        """The blob's path in this node's store, copied from the first source that can send it."""
        if self.store is None:
            raise StoreError("this node has no store of its own: it reads the control plane's files")
        digest = normalize_digest(digest)
        have = self.local(digest)
        if have is not None and have[1] == size:
            return Path(have[0])
        task = self._flights.get(digest)
        if task is None:
            task = asyncio.create_task(self._transfer(digest, size, list(sources)))
            self._flights[digest] = task
            task.add_done_callback(lambda done: self._forget(digest, done))
        return await asyncio.shield(task)

    def _forget(self, digest: str, task: asyncio.Task[Path]) -> None:
        if self._flights.get(digest) is task:
            del self._flights[digest]
        if not task.cancelled():
            task.exception()  # retrieved: a failure reaches the callers, not the loop's log

    async def _transfer(self, digest: str, size: int, sources: list[BlobSource]) -> Path:
        assert self.store is not None
        self.transfers += 1
        path = self.store.partial_dir / f"transfer-{digest.split(':', 1)[1]}.partial"
        part = await asyncio.to_thread(_Partial, path, size)
        started = time.monotonic()
        progress: dict[str, Any] = {
            "digest": digest,
            "total": size,
            "done": part.size,
            "resumed_from": part.size,
            "source": None,
        }
        self._progress[digest] = progress
        try:
            errors: list[str] = []
            source: BlobSource | None = None
            for source in sources:
                progress["source"] = source.name
                try:
                    await self._copy(source, part, size, progress)
                    break
                except TransferFailed as exc:
                    errors.append(f"{source.name}: {exc}")
                    log.warning("blob %s from %s: %s; %d bytes kept", digest, source.name, exc, part.size)
            else:
                why = "; ".join(errors) or "no node has it"
                raise TransferFailed(
                    f"blob {digest}: no source could send it ({why}); {part.size} bytes kept"
                )
            got = f"sha256:{part.hash.hexdigest()}"
            if got != digest:
                raise IntegrityError(
                    f"blob {digest} copied from {source.name if source else '?'}: the received bytes hash "
                    f"to {got}; refused, nothing kept"
                )
            await asyncio.to_thread(part.finish)
            blob = await asyncio.to_thread(self.store.place, part.path, digest)
            seconds = time.monotonic() - started
            self._recent.append(
                {
                    "digest": digest,
                    "source": progress["source"],
                    "bytes": size - int(progress["resumed_from"]),
                    "resumed_from": progress["resumed_from"],
                    "seconds": round(seconds, 3),
                }
            )
            log.info("blob %s: %d bytes from %s in %.2f s", digest, size, progress["source"], seconds)
            return blob.path
        except IntegrityError:
            await asyncio.to_thread(part.discard)
            raise
        finally:
            self._progress.pop(digest, None)
            await asyncio.to_thread(part.close)

    async def _copy(self, source: BlobSource, part: _Partial, size: int, progress: dict[str, Any]) -> None:
        """Append the rest of the blob from ``source``: ``window`` reads in flight, written in order."""
        pending: collections.deque[tuple[int, asyncio.Task[bytes]]] = collections.deque()
        offset = part.size

        def ask() -> None:
            nonlocal offset
            while len(pending) < self.window and offset < size:
                n = min(self.chunk_size, size - offset)
                pending.append((n, asyncio.create_task(self._read(source, offset, n))))
                offset += n

        try:
            ask()
            while pending:
                n, task = pending.popleft()
                data = await task
                if len(data) != n:
                    raise TransferFailed(f"sent {len(data)} bytes at offset {part.size}, asked for {n}")
                await asyncio.to_thread(part.write, data)
                progress["done"] = part.size
                del data
                ask()
        finally:
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(t for _, t in pending), return_exceptions=True)

    async def _read(self, source: BlobSource, offset: int, length: int) -> bytes:
        last: BaseException | None = None
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
            try:
                return await asyncio.wait_for(source.read(offset, length), self.chunk_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                last = exc
        raise TransferFailed(f"reading {length} bytes at {offset} failed {self.attempts} times: {last}")
