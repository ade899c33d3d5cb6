"""``https://`` and ``http://`` sources: one GGUF file at a URL, downloaded resumably.

``https://host/path/model.gguf[#sha256=<hex>]``. Resolving sends a HEAD (redirects followed) for the size,
the ETag and the file name; the digest comes from a ``#sha256=<hex>`` fragment or, failing that, from a
``<url>.sha256`` sidecar when the server has one. Without a digest the blob is checked against the size
only. The store resumes an interrupted download with ``Range`` + ``If-Range: <ETag>`` (see
``superollama.store.transfer``): a changed ETag makes the server send the whole new file, from zero.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from pathlib import PurePosixPath
from typing import ClassVar
from urllib.parse import unquote, urldefrag, urlsplit

import aiohttp

from superollama.core import MEDIA_MODEL
from superollama.errors import InvalidRequest
from superollama.store.sources import _http
from superollama.store.sources.base import Body, RetryPolicy, SourceFile, SourcePlan

__all__ = ["HttpSource", "PlainHttpSource"]

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_SIDECAR_TOTAL = 15.0  # seconds: an optional extra never holds a pull up for long


def fragment_digest(fragment: str) -> str | None:
    """``sha256:<hex>`` from a ``sha256=<hex>`` URL fragment; None when there is none."""
    for part in fragment.split("&"):
        key, _, value = part.partition("=")
        if key.lower() == "sha256":
            if not _HEX64.match(value):
                raise InvalidRequest(f"invalid sha256 in the URL fragment: {value!r}")
            return f"sha256:{value.lower()}"
    return None


def sidecar_digest(text: str | None) -> str | None:
    """The digest in a ``sha256sum``-style sidecar (``<hex>  name``); None if it does not hold one."""
    if not text:
        return None
    first = text.split(maxsplit=1)[0] if text.split() else ""
    return f"sha256:{first.lower()}" if _HEX64.match(first) else None


class HttpSource:
    """A GGUF file at an ``https://`` URL."""

    scheme: ClassVar[str] = "https"

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        retry: RetryPolicy | None = None,
        sidecar: bool = True,
    ) -> None:
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.sidecar = sidecar

    async def resolve(self, ref: str) -> SourcePlan:
        url, fragment = urldefrag(ref)
        parts = urlsplit(url)
        if parts.scheme != self.scheme or not parts.netloc:
            raise InvalidRequest(f"not an {self.scheme}:// URL: {ref!r}", param="source")
        digest = fragment_digest(fragment)
        head = await _http.head(url, headers=self.headers, timeout=self.timeout, retry=self.retry)
        if digest is None and self.sidecar:
            sidecar = _http.timeout_of(self.timeout, total=_SIDECAR_TOTAL)
            digest = sidecar_digest(await _http.get_text(f"{url}.sha256", timeout=sidecar))
        filename = _basename(head.filename) or _basename(unquote(urlsplit(head.url).path))
        filename = filename or _basename(unquote(parts.path))
        if not filename.lower().endswith(".gguf"):
            raise InvalidRequest(
                f"{url}: {self.scheme}:// pulls take one GGUF file (a name ending in .gguf), got {filename!r}"
            )
        etag = head.etag if head.etag and not head.etag.startswith("W/") else None
        file = SourceFile(
            filename=filename,
            location=url,
            size=head.size,
            digest=digest,
            media_type=MEDIA_MODEL,
            validator=etag or head.last_modified,
        )
        source = f"{url}#sha256={digest.split(':', 1)[1]}" if digest else url
        return SourcePlan(source=source, format="gguf", files=(file,))

    def open_at(self, file: SourceFile, offset: int) -> AbstractAsyncContextManager[Body]:
        return _http.open_range(
            file.location,
            offset=offset,
            validator=file.validator,
            headers=self.headers,
            timeout=self.timeout,
            what=file.location,
        )

    async def open(self, file: SourceFile) -> AsyncGenerator[bytes, None]:
        async with self.open_at(file, 0) as body, aclosing(body.chunks) as chunks:
            async for chunk in chunks:
                yield chunk


class PlainHttpSource(HttpSource):
    """The same, over plain ``http://`` (a local mirror, a test stand-in)."""

    scheme: ClassVar[str] = "http"


def _basename(name: str | None) -> str:
    return PurePosixPath(name or "").name
