"""The ``Source`` seam: where a version's files come from (``file``, ``https``, ``hf``, ``ollama`` …).

A source first *resolves* a reference into a ``SourcePlan`` — the files to fetch, with their sizes and
digests when the source knows them — then *opens* each file as a stream of bytes. The store does the rest
(hashing, verifying, placing blobs, writing the manifest), the same way for every source.

Two optional capabilities let the store do better than one plain stream:

- ``RangedSource.open_at(file, offset)``: the bytes from an offset on (HTTP ``Range``), so the store keeps a
  partial file in ``tmp/`` and resumes it after an interruption or a restart. Transient failures (a lost
  connection, a 5xx) are raised as ``Unavailable``; the store retries those, with backoff, from where the
  bytes stopped.
- ``LinkableSource.linkable(file)``: an immutable, content-addressed file on this machine (a local Ollama
  blob) that the store may hard-link instead of copying.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Protocol, runtime_checkable

from superollama.core import MEDIA_MODEL
from superollama.errors import InvalidRequest

__all__ = [
    "MEDIA_FILE",
    "Body",
    "LinkableSource",
    "RangedSource",
    "RetryPolicy",
    "Source",
    "SourceFile",
    "SourcePlan",
    "safe_relpath",
    "split_scheme",
]

MEDIA_FILE = "application/vnd.superollama.file"  # one file of a folder model (safetensors, tokenizer …)


@dataclass(frozen=True)
class SourceFile:
    """One file of a plan. ``location`` is the source's own locator (a path, a URL, a registry blob)."""

    filename: str
    location: str
    size: int | None = None
    digest: str | None = None  # "sha256:<hex>" when the source knows it (ollama, hf LFS, file)
    media_type: str = MEDIA_MODEL
    validator: str | None = None  # a strong ETag (or Last-Modified) that names these exact bytes


@dataclass(frozen=True)
class SourcePlan:
    """What a reference resolves to: the files of one version, a format guess and extra metadata."""

    source: str  # canonical reference recorded in the manifest ("file:///abs/model.gguf")
    format: str  # "gguf", "safetensors", "ollama" …
    files: tuple[SourceFile, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def total_size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)


@dataclass(frozen=True)
class Body:
    """An open stream of one file's bytes, starting at ``offset`` (0 when the source could not resume)."""

    offset: int
    chunks: AsyncGenerator[bytes, None]


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of transient failures: ``attempts`` tries after the first, exponential backoff,
    and no retry once ``stall`` seconds have passed without progress (no new byte received): a source that
    accepts connections but never answers fails the pull within about ``stall`` + one read timeout."""

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 10.0
    stall: float = 120.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


@runtime_checkable
class Source(Protocol):
    """Where model files come from. Implementations register by ``scheme``."""

    scheme: ClassVar[str]

    async def resolve(self, ref: str) -> SourcePlan:
        """Resolve ``ref`` into the files to fetch; ``SourceNotFound`` when there is nothing there."""
        ...

    def open(self, file: SourceFile) -> AsyncIterator[bytes]:
        """Stream one planned file's bytes (the store hashes and verifies them)."""
        ...


@runtime_checkable
class RangedSource(Protocol):
    """A source that can stream a file from an offset on (resumable downloads)."""

    def open_at(self, file: SourceFile, offset: int) -> AbstractAsyncContextManager[Body]:
        """The bytes from ``offset`` on; ``Body.offset`` is 0 if the source had to start over (the file
        changed, or the server ignores ranges). ``Unavailable`` for a failure worth retrying."""
        ...


@runtime_checkable
class LinkableSource(Protocol):
    """A source whose files may already lie on this machine as immutable, content-addressed files."""

    def linkable(self, file: SourceFile) -> Path | None:
        """The local file holding ``file``'s bytes, which the store may hard-link; None to stream it."""
        ...


def split_scheme(ref: str) -> tuple[str, str]:
    """``("hf", "org/repo")`` for ``hf://org/repo``; a plain path is ``("file", path)``."""
    scheme, sep, rest = ref.partition("://")
    if sep and scheme and scheme.replace("+", "").replace("-", "").isalnum():
        return scheme.lower(), rest
    return "file", ref


def safe_relpath(name: str) -> str:
    """``name`` as a relative POSIX path inside a model folder; ``InvalidRequest`` for one that would
    leave it (absolute, ``..``, empty parts, a backslash)."""
    path = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise InvalidRequest(f"unsafe file name in a model folder: {name!r}")
    return str(path)
