"""The ``Source`` seam: where a version's files come from (``file``, later ``hf``, ``ollama``, ``https``).

A source first *resolves* a reference into a ``SourcePlan`` — the files to fetch, with their sizes and
digests when the source knows them — then *opens* each file as a stream of bytes. The store does the rest
(hashing, verifying, placing blobs, writing the manifest), the same way for every source.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from superollama.core import MEDIA_MODEL

__all__ = ["Source", "SourceFile", "SourcePlan", "split_scheme"]


@dataclass(frozen=True)
class SourceFile:
    """One file of a plan. ``location`` is the source's own locator (a path, a URL, a registry blob)."""

    filename: str
    location: str
    size: int | None = None
    digest: str | None = None  # "sha256:<hex>" when the source knows it (ollama, hf LFS, file)
    media_type: str = MEDIA_MODEL


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


def split_scheme(ref: str) -> tuple[str, str]:
    """``("hf", "org/repo")`` for ``hf://org/repo``; a plain path is ``("file", path)``."""
    scheme, sep, rest = ref.partition("://")
    if sep and scheme and scheme.replace("+", "").replace("-", "").isalnum():
        return scheme.lower(), rest
    return "file", ref
