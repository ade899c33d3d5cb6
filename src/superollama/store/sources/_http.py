"""HTTP plumbing the network sources share (aiohttp client): sessions, status and error mapping, JSON
GETs with retries, HEAD probes and ranged GETs for resumable downloads.

aiohttp's exceptions are mapped here, once: a lost connection, a timeout or a 408/429/5xx is
``Unavailable`` (worth a retry); 404/410 and 401/403 are ``SourceNotFound`` (with a hint for the latter);
anything else is ``StoreError``.

Every request runs under a ``ClientTimeout`` with a connect and a read timeout (``sock_read`` bounds the
wait for the answer's headers and for each piece of its body), so a silent source fails an attempt instead
of holding it; ``retrying`` stops retrying once ``RetryPolicy.stall`` seconds passed without an answer.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson

from superollama.errors import InvalidRequest, SourceNotFound, StoreError, Unavailable
from superollama.store.sources.base import Body, RetryPolicy

__all__ = [
    "DEFAULT_TIMEOUT",
    "Head",
    "get_json",
    "get_text",
    "head",
    "open_range",
    "retrying",
    "stalled",
    "strong_validator",
    "timeout_of",
]

T = TypeVar("T")

USER_AGENT = "superollama/0.1"
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=60)
_READ_BUFSIZE = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_TRANSIENT = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


@dataclass(frozen=True)
class Head:
    """What a HEAD (or a GET's headers) says about a URL, after redirects."""

    url: str
    size: int | None
    etag: str | None
    last_modified: str | None
    filename: str | None


def session(timeout: aiohttp.ClientTimeout | None = None) -> aiohttp.ClientSession:
    """A short-lived client session: one per resolve or download, closed with it."""
    return aiohttp.ClientSession(
        timeout=timeout or DEFAULT_TIMEOUT,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        read_bufsize=_READ_BUFSIZE,
        auto_decompress=False,
    )


def check(resp: aiohttp.ClientResponse, what: str, *, hint: str = "") -> None:
    """Map an error status to our tree; return for a success."""
    status = resp.status
    if status < 400:
        return
    hint = f"; {hint}" if hint else ""
    if status in (404, 410):
        raise SourceNotFound(f"{what}: not found (HTTP {status} from {resp.url}){hint}")
    if status in (401, 403):
        raise SourceNotFound(f"{what}: access denied (HTTP {status} from {resp.url}){hint}")
    if status in (408, 425, 429) or status >= 500:
        retry_after = resp.headers.get("Retry-After", "")
        raise Unavailable(
            f"{what}: HTTP {status} from {resp.url}",
            retry_after=float(retry_after) if retry_after.isdigit() else None,
        )
    raise StoreError(f"{what}: HTTP {status} from {resp.url}")


def timeout_of(timeout: aiohttp.ClientTimeout | None, *, total: float | None = None) -> aiohttp.ClientTimeout:
    """``timeout`` (or the default) with its connect and read limits, and ``total`` when given."""
    base = timeout or DEFAULT_TIMEOUT
    return aiohttp.ClientTimeout(
        total=total if total is not None else base.total,
        sock_connect=base.sock_connect,
        sock_read=base.sock_read,
    )


def _mapped(exc: BaseException, what: str) -> Exception:
    if isinstance(exc, aiohttp.InvalidURL):
        return InvalidRequest(f"{what}: invalid URL {exc}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Unavailable(f"{what}: timed out connecting to the source")
    if isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError):
        return Unavailable(f"{what}: the source sent nothing within the read timeout")
    if isinstance(exc, _TRANSIENT):
        return Unavailable(f"{what}: {type(exc).__name__}: {exc}".rstrip(": "))
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")


def stalled(exc: Unavailable, seconds: float) -> Unavailable:
    """The last failure of a source that made no progress for ``seconds``: the pull gives up."""
    return Unavailable(f"{exc.message} (no progress for {seconds:.0f} s: giving up)")


async def retrying(fn: Callable[[], Awaitable[T]], retry: RetryPolicy) -> T:
    """Run ``fn``, again after a backoff while it raises ``Unavailable``, at most ``retry.attempts`` times
    and not after ``retry.stall`` seconds."""
    attempt = 0
    started = time.monotonic()
    while True:
        try:
            return await fn()
        except Unavailable as exc:
            attempt += 1
            if attempt > retry.attempts:
                raise
            if time.monotonic() - started + retry.delay(attempt) >= retry.stall:
                raise stalled(exc, time.monotonic() - started) from exc
            await asyncio.sleep(retry.delay(attempt))


async def _get_bytes(
    url: str, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout | None, what: str, hint: str
) -> bytes:
    try:
        async with session(timeout) as s, s.get(url, headers=dict(headers)) as resp:
            check(resp, what, hint=hint)
            return await resp.read()
    except aiohttp.ClientError as exc:
        raise _mapped(exc, what) from exc
    except TimeoutError as exc:
        raise _mapped(exc, what) from exc


async def get_json(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: aiohttp.ClientTimeout | None = None,
    retry: RetryPolicy | None = None,
    what: str = "",
    hint: str = "",
) -> Any:
    """GET and parse a JSON document, retrying transient failures."""
    what = what or url
    data = await retrying(lambda: _get_bytes(url, headers or {}, timeout, what, hint), retry or RetryPolicy())
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StoreError(f"{what}: not JSON ({exc})") from exc


async def get_text(
    url: str, *, headers: Mapping[str, str] | None = None, timeout: aiohttp.ClientTimeout | None = None
) -> str | None:
    """A small text document, or None for any failure (an optional sidecar: one try, no retry)."""
    try:
        data = await _get_bytes(url, headers or {}, timeout, url, "")
    except (StoreError, SourceNotFound, Unavailable, InvalidRequest):
        return None
    return data[:4096].decode("utf-8", "replace")


def strong_validator(headers: Mapping[str, str]) -> str | None:
    """A validator ``If-Range`` may carry: a strong ETag, else Last-Modified; None if there is neither."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


async def head(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: aiohttp.ClientTimeout | None = None,
    retry: RetryPolicy | None = None,
    what: str = "",
) -> Head:
    """Size, ETag and file name of a URL (a HEAD; a GET's headers where HEAD is refused)."""
    what = what or url

    async def probe() -> Head:
        try:
            async with session(timeout) as s:
                async with s.head(url, headers=dict(headers or {}), allow_redirects=True) as resp:
                    if resp.status not in (405, 501):
                        check(resp, what)
                        return _head_of(resp)
                async with s.get(url, headers=dict(headers or {})) as resp:
                    check(resp, what)
                    return _head_of(resp)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, what) from exc

    return await retrying(probe, retry or RetryPolicy())


def _head_of(resp: aiohttp.ClientResponse) -> Head:
    length = resp.headers.get("Content-Length")
    disposition = resp.content_disposition
    return Head(
        url=str(resp.url),
        size=int(length) if length and length.isdigit() else None,
        etag=resp.headers.get("ETag"),
        last_modified=resp.headers.get("Last-Modified"),
        filename=disposition.filename if disposition is not None else None,
    )


@asynccontextmanager
async def open_range(
    url: str,
    *,
    offset: int = 0,
    validator: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: aiohttp.ClientTimeout | None = None,
    what: str = "",
) -> AsyncGenerator[Body, None]:
    """GET ``url`` from byte ``offset`` on (``Range`` + ``If-Range: validator``), following redirects.

    A 200 answer (the validator no longer matches, or no ranges) is a ``Body`` from offset 0; a 416 (our
    partial file is longer than the file now is) starts over with a plain GET.
    """
    what = what or url
    base = dict(headers or {})
    ranged = dict(base)
    if offset > 0:
        ranged["Range"] = f"bytes={offset}-"
        if validator:
            ranged["If-Range"] = validator
    try:
        async with session(timeout) as s:
            resp = await s.get(url, headers=ranged)
            try:
                if resp.status == 416 and offset > 0:
                    resp.release()
                    resp = await s.get(url, headers=base)
                check(resp, what)
                start = 0
                if resp.status == 206:
                    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if m is None:
                        raise StoreError(f"{what}: a 206 answer without a usable Content-Range")
                    start = int(m.group(1))
                yield Body(offset=start, chunks=_chunks(resp, what))
            finally:
                resp.release()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _mapped(exc, what) from exc


async def _chunks(resp: aiohttp.ClientResponse, what: str) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _mapped(exc, f"{what}: download interrupted") from exc
