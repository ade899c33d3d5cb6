"""``AsyncClient``: the admin API from asyncio code.

Its synchronous twin is generated from this file by ``scripts/unasync.py`` (edit this one, then
run it; a unit test fails when the two differ)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from superollama.client._async_files import AsyncChat, AsyncFiles, AsyncVectorStores
from superollama.client._async_resources import (
    AsyncConnections,
    AsyncDeployments,
    AsyncFleet,
    AsyncInstances,
    AsyncJobs,
    AsyncKeys,
    AsyncModels,
    AsyncRollouts,
    AsyncShadow,
    AsyncStorage,
)
from superollama.client._async_system import (
    AsyncEvents,
    AsyncGateways,
    AsyncGrounding,
    AsyncNodes,
    AsyncPlugins,
    AsyncUsage,
    AsyncWebhooks,
)
from superollama.client._async_transport import AsyncTransport
from superollama.client._common import DEFAULT_MAX_RETRIES, REQUEST_TIMEOUT, default_settings, find_server_url

if TYPE_CHECKING:
    import httpx

__all__ = ["AsyncClient"]


class AsyncClient:
    """A client of one Super Ollama server's admin API.

    ``base_url``: default ``SUPEROLLAMA_URL``, else the URL a live ``superollama serve`` on this home
    wrote, else ``http://127.0.0.1:11435``. ``api_key``: default ``SUPEROLLAMA_API_KEY`` (sent as
    ``Authorization: Bearer``). ``timeout``: seconds a call may take (some load or drain models).
    ``max_retries``: how many times a call that is safe to repeat is tried again (``_common``).
    ``transport``: an httpx transport (tests run an app in-process through one).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = REQUEST_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if base_url is None:
            base_url = find_server_url(default_settings())
        if api_key is None:
            api_key = os.environ.get("SUPEROLLAMA_API_KEY") or None
        self.base_url = base_url.rstrip("/")
        self._transport = AsyncTransport(
            self.base_url, api_key, timeout=timeout, max_retries=max_retries, transport=transport
        )
        t = self._transport
        self.models = AsyncModels(t)
        self.instances = AsyncInstances(t)
        self.storage = AsyncStorage(t)
        self.jobs = AsyncJobs(t)
        self.deployments = AsyncDeployments(t)
        self.rollouts = AsyncRollouts(t)
        self.shadow = AsyncShadow(t)
        self.fleet = AsyncFleet(t)
        self.connections = AsyncConnections(t)
        self.keys = AsyncKeys(t)
        self.events = AsyncEvents(t)
        self.usage = AsyncUsage(t)
        self.gateways = AsyncGateways(t)
        self.nodes = AsyncNodes(t)
        self.plugins = AsyncPlugins(t)
        self.webhooks = AsyncWebhooks(t)
        self.grounding = AsyncGrounding(t)
        self.files = AsyncFiles(t)
        self.vector_stores = AsyncVectorStores(t)
        self.chat = AsyncChat(t)

    async def reachable(self) -> bool:
        """Whether the server answers ``/health`` (within two seconds, no retries)."""
        return await self._transport.reachable()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        files: Any = None,
        data: Any = None,
    ) -> Any:
        """A route the client has no method for yet (a plugin's, a newer server's): its JSON answer,
        errors raised as for the methods; GET is retried like theirs."""
        return await self._transport.call(method, path, params=params, json=json, files=files, data=data)

    async def stream_lines(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The NDJSON lines of such a route's streamed answer."""
        async for line in self._transport.lines(method, path, json=json, params=params):
            yield line

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
