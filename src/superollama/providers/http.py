"""What every HTTP provider shares: one JSON GET with the endpoint's headers, errors mapped once."""

from __future__ import annotations

from typing import Any

import aiohttp

from superollama.core import Endpoint
from superollama.errors import UpstreamError

__all__ = ["get_json", "strip_suffix"]

_TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=5)


async def get_json(session: aiohttp.ClientSession, ep: Endpoint, path: str) -> Any:
    url = ep.base_url + path
    try:
        async with session.get(url, headers=dict(ep.headers), timeout=_TIMEOUT) as response:
            if response.status >= 400:
                text = (await response.text())[:300]
                raise UpstreamError(f"GET {url}: HTTP {response.status} {text}".strip())
            return await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
        raise UpstreamError(f"GET {url}: {reason}") from exc


def strip_suffix(url: str, *suffixes: str) -> str:
    url = url.rstrip("/")
    for suffix in suffixes:
        if url.endswith(suffix):
            return url[: -len(suffix)].rstrip("/")
    return url
