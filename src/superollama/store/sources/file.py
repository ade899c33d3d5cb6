"""``file://`` source: a local GGUF file (``file:///abs/path``, or a plain absolute or relative path)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote

from superollama.core import MEDIA_MODEL
from superollama.errors import InvalidRequest, SourceNotFound
from superollama.store.blobs import hash_file, read_chunks
from superollama.store.gguf import is_gguf
from superollama.store.sources.base import SourceFile, SourcePlan, split_scheme

__all__ = ["FileSource"]


def local_path(ref: str) -> Path:
    """The absolute path a ``file://`` URL or plain path names."""
    scheme, rest = split_scheme(ref)
    if scheme != "file":
        raise InvalidRequest(f"not a file reference: {ref!r}")
    if ref.startswith("file://"):
        rest = unquote(rest)
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
    if not rest:
        raise InvalidRequest("empty file path")
    return Path(rest).expanduser().absolute()


class FileSource:
    """Reads a local file. Resolving hashes it (one read), so the plan carries its digest like a registry's
    would, and the copy that follows is verified against it (a file changed meanwhile is refused)."""

    scheme: ClassVar[str] = "file"

    async def resolve(self, ref: str) -> SourcePlan:
        path = local_path(ref)
        if await asyncio.to_thread(path.is_dir):
            raise InvalidRequest(f"{path} is a directory: pulling a folder is not supported yet")
        if not await asyncio.to_thread(path.is_file):
            raise SourceNotFound(f"no such file: {path}")
        if not await asyncio.to_thread(is_gguf, path):
            raise InvalidRequest(f"{path} is not a GGUF file: file:// pulls support GGUF only for now")
        digest, size = await hash_file(path)
        file = SourceFile(
            filename=path.name, location=str(path), size=size, digest=digest, media_type=MEDIA_MODEL
        )
        return SourcePlan(source=path.as_uri(), format="gguf", files=(file,))

    async def open(self, file: SourceFile) -> AsyncGenerator[bytes, None]:
        try:
            async with aclosing(read_chunks(Path(file.location))) as chunks:
                async for chunk in chunks:
                    yield chunk
        except FileNotFoundError:
            raise SourceNotFound(f"no such file: {file.location}") from None
