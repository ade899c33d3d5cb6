"""Images in chat requests, before they reach a backend: refused for a text-only model, fetched when
they are URLs, checked when they are data.

Every edge turns its images into OpenAI ``image_url`` parts (``wire/``) and calls ``ImageInputs.prepare``
with the route and the OpenAI chat payload, which it rewrites in place:

- a route of a version we run that does not read images (``core.images.capabilities_of``): a 400 in the
  client's protocol, before anything is fetched or loaded. A connection's model is let through (its
  server knows what it reads and answers for itself);
- ``http(s)://`` URLs: fetched here, so that the backend never reaches out on a client's behalf, and
  replaced by a ``data:`` URL. The fetch is bounded (``max_bytes``, ``timeout``, at most
  ``_MAX_REDIRECTS`` redirects, each checked again) and, unless ``allow_private``, refuses every address
  that is not public (loopback, private, link-local, shared, reserved, multicast): a host name is checked
  where it is resolved, for the connection that is actually made, so a name that resolves to an inner
  address is refused too (no check-then-connect gap);
- ``data:`` URLs: decoded and sniffed (an image file, within ``max_bytes``); a bare base64 string (what
  some clients send) becomes a data URL;
- any other scheme (``file:``, ``ftp:`` …): a 400.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from superollama.core.images import VISION, ImageError, data_url, image_parts, parse_data_url, sniff_mime
from superollama.core.routing import Route
from superollama.errors import InvalidRequest
from superollama.settings import Settings

__all__ = ["ImageInputs", "ImageRefused", "TextOnlyModel", "image_inputs"]

_MAX_REDIRECTS: Final = 3
_CHUNK: Final = 64 * 1024


class ImageRefused(InvalidRequest):
    """An image the gateway will not pass on: unreadable, too large, or at an address it may not fetch."""

    code = "invalid_image"


class TextOnlyModel(InvalidRequest):
    """Images sent to a model that reads text only."""

    code = "image_input_not_supported"


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _PublicOnly(AbstractResolver):
    """Resolves through aiohttp's threaded resolver and keeps the public addresses only."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [r for r in found if _public(r["host"])]
        if not public:
            raise ImageRefused(f"image URL host {host!r} is not a public address", param="messages")
        return public

    async def close(self) -> None:
        await self._inner.close()


class ImageInputs:
    """The gateway's image step (see the module docstring); one per process, built from the settings."""

    def __init__(
        self, *, max_bytes: int = 20 * 1024 * 1024, timeout: float = 10.0, allow_private: bool = False
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.allow_private = allow_private

    async def prepare(self, route: Route, payload: dict[str, Any], *, model: str | None = None) -> None:
        """Check (and fetch) the images of an OpenAI chat ``payload`` for ``route``, in place."""
        parts = [part for _, part in image_parts(payload.get("messages"))]
        if not parts:
            return
        self.require_vision(route, model)
        session: aiohttp.ClientSession | None = None
        try:
            for part in parts:
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, dict) else ref
                if not isinstance(url, str) or not url:
                    raise ImageRefused("an image_url part needs a 'url'", param="messages")
                scheme = urlsplit(url).scheme.lower() if ":" in url[:8] else ""
                if scheme in ("http", "https"):
                    if session is None:
                        session = self._session()
                    new = await self._fetch(session, url)
                elif scheme == "data":
                    new = self._checked(url)
                else:
                    new = self._bare_base64(url)
                detail = ref.get("detail") if isinstance(ref, dict) else None
                part["image_url"] = {"url": new, **({"detail": detail} if detail else {})}
        finally:
            if session is not None:
                await session.close()

    def require_vision(self, route: Route, model: str | None = None) -> None:
        """A 400 for images sent to a version of ours that reads text only."""
        if route.connection is None and VISION not in route.capabilities:
            name = model or route.deployment or route.name
            raise TextOnlyModel(
                f"model {name!r} is text-only: it cannot read images (use a vision model)", param="messages"
            )

    # -- data ----------------------------------------------------------------------------------------
    def _checked(self, url: str) -> str:
        try:
            _, data = parse_data_url(url)
        except ImageError as exc:
            raise ImageRefused(str(exc), param="messages") from None
        self._within(len(data))
        return url

    def _bare_base64(self, value: str) -> str:
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            scheme = value.split(":", 1)[0] if ":" in value else ""
            what = f"scheme {scheme!r}" if scheme else "value"
            raise ImageRefused(
                f"unsupported image URL {what}: send an http(s) URL, a data URL or base64", param="messages"
            ) from None
        mime = sniff_mime(data[:16])
        if mime is None:
            raise ImageRefused("the image is not a PNG, JPEG, GIF, WebP or BMP file", param="messages")
        self._within(len(data))
        return data_url(data, mime)

    def _within(self, size: int) -> None:
        if size > self.max_bytes:
            raise ImageRefused(f"an image is over the {self.max_bytes} byte limit", param="messages")

    # -- fetch ---------------------------------------------------------------------------------------
    def _session(self) -> aiohttp.ClientSession:
        resolver = aiohttp.ThreadedResolver() if self.allow_private else _PublicOnly()
        connector = aiohttp.TCPConnector(resolver=resolver, limit=4, use_dns_cache=False)
        return aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False
        )

    def _allowed(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ImageRefused("an image URL must be http(s)://host/…", param="messages")
        if self.allow_private:
            return
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return  # a host name: checked where it resolves (``_PublicOnly``)
        if not _public(str(literal)):
            raise ImageRefused(f"image URL host {parts.hostname!r} is not a public address", param="messages")

    async def _fetch(self, session: aiohttp.ClientSession, url: str) -> str:
        shown = url if len(url) <= 200 else url[:200] + "…"
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                self._allowed(url)
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    if resp.status != 200:
                        raise ImageRefused(f"image URL {shown} answered {resp.status}", param="messages")
                    if (resp.content_length or 0) > self.max_bytes:
                        self._within(resp.content_length or 0)
                    data = bytearray()
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        data += chunk
                        self._within(len(data))
                    mime = sniff_mime(bytes(data[:16]))
                    if mime is None:
                        raise ImageRefused(f"image URL {shown} is not an image file", param="messages")
                    return data_url(bytes(data), mime)
            raise ImageRefused(f"image URL {shown}: more than {_MAX_REDIRECTS} redirects", param="messages")
        except TimeoutError:
            raise ImageRefused(
                f"image URL {shown}: no answer within {self.timeout:g} s", param="messages"
            ) from None
        except aiohttp.ClientError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, ImageRefused) else None
            if cause is not None:
                raise cause from None
            raise ImageRefused(f"image URL {shown} cannot be fetched: {exc}", param="messages") from None


def image_inputs(settings: Settings) -> ImageInputs:
    return ImageInputs(
        max_bytes=settings.image_max_bytes,
        timeout=settings.image_fetch_timeout,
        allow_private=settings.image_fetch_private,
    )
