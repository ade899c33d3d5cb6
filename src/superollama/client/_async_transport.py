"""The asynchronous client's one seam to HTTP: a call, an NDJSON stream, a server-sent event stream.

Its synchronous twin is generated from this file by ``scripts/unasync.py`` (edit this one, then
run it; a unit test fails when the two differ).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from superollama.client._common import (
    call_timeout,
    decode,
    decode_line,
    headers,
    retry_wait,
    status_error,
    talking,
    timeouts,
    with_retry_after,
    without_none,
)
from superollama.client._errors import SuperollamaError

if TYPE_CHECKING:
    import httpx

__all__ = ["AsyncResource", "AsyncTransport", "ServerEvent"]

ServerEvent = tuple[str, str]  # (event name, data) of one server-sent event


class AsyncTransport:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        max_retries: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        import httpx

        self.base_url = base_url
        self.max_retries = max_retries
        self._timeout, self._stream_timeout = timeouts(timeout)
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=self._timeout, headers=headers(api_key), transport=transport
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def reachable(self) -> bool:
        """Whether ``/health`` answers 200 within two seconds (no retries)."""
        import httpx

        try:
            return (await self._http.get("/health", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        files: Any = None,
        data: Any = None,
        idempotent: bool | None = None,
        raw: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """The JSON answer of one call (its bytes with ``raw``); retried as ``_common.retry_wait`` allows.
        Parameters that are None are left out of the query. ``timeout``: this call's, in seconds, for
        the calls the server itself bounds by a longer time (the client's otherwise)."""
        query = without_none(**(params or {}))
        attempt = 0
        while True:
            try:
                return await self._once(method, path, query, json, files, data, raw, timeout)
            except SuperollamaError as exc:
                wait = retry_wait(exc, method, idempotent, attempt, self.max_retries)
                if wait is None:
                    raise
            attempt += 1
            await asyncio.sleep(wait)

    async def _once(  # noqa: PLR0917
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        json: Any,
        files: Any,
        data: Any,
        raw: bool,
        timeout: float | None,
    ) -> Any:
        limit = self._timeout if timeout is None else call_timeout(timeout)
        with talking(self.base_url):
            response = await self._http.request(
                method, path, params=params, json=json, files=files, data=data, timeout=limit
            )
            if response.status_code >= 400:
                raise with_retry_after(status_error(response), response)
            return response.content if raw else decode(response)

    async def lines(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The NDJSON lines of a streamed answer (job progress), never retried."""
        query = without_none(**(params or {}))  # a None would go as an empty value
        stream = self._http.stream(method, path, json=json, params=query, timeout=self._stream_timeout)
        with talking(self.base_url):
            async with stream as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise status_error(response)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield decode_line(line)

    async def events(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> AsyncIterator[ServerEvent]:
        """The server-sent events of a streamed answer, as (event, data); ends at ``data: [DONE]``."""
        query = without_none(**(params or {}))  # a None would go as an empty value
        stream = self._http.stream(method, path, json=json, params=query, timeout=self._stream_timeout)
        with talking(self.base_url):
            async with stream as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise status_error(response)
                event, data = "message", []
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        if data == ["[DONE]"]:
                            return
                        yield event, "\n".join(data)
                        event, data = "message", []
                if data and data != ["[DONE]"]:
                    yield event, "\n".join(data)


class AsyncResource:
    """A group of methods of the client (``models``, ``keys`` …): each is one route, over one transport."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport
