"""An existing Ollama server. Its models come from ``GET /api/tags``; OpenAI-protocol requests go to its
OpenAI-compatible ``/v1`` routes (Ollama serves chat, completions and embeddings there).

A model's description is the server's own ``POST /api/show`` answer. It also manages the models on that
server when a user asks: ``pull`` (``POST /api/pull``, its NDJSON progress passed on as it comes), ``copy``
(``POST /api/copy``) and ``delete`` (``DELETE /api/delete``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import aiohttp

from superollama.core import CredentialSource, Endpoint
from superollama.errors import UpstreamError
from superollama.providers.http import LONG_TIMEOUT, get_json, request_json, stream_ndjson, strip_suffix

__all__ = ["OllamaProvider"]


class OllamaProvider:
    kind: ClassVar[str] = "ollama"

    def __init__(self, session: aiohttp.ClientSession, credentials: CredentialSource | None = None) -> None:
        self._session = session
        self._credentials = credentials  # resolves an endpoint's credential at send time

    def relay_base(self, url: str) -> str:
        return strip_suffix(url, "/v1", "/api")

    async def models(self, ep: Endpoint) -> list[str]:
        body = await get_json(self._session, ep, "/api/tags", credentials=self._credentials)
        models = body.get("models") if isinstance(body, dict) else None
        if not isinstance(models, list):
            raise UpstreamError("GET /api/tags: not an Ollama model list")
        names = (m.get("name") or m.get("model") for m in models if isinstance(m, dict))
        return [n for n in names if isinstance(n, str) and n]

    async def show(self, ep: Endpoint, model: str) -> dict[str, Any]:
        """The server's ``/api/show`` answer for ``model``, as it is (``NotFound`` in its own words)."""
        body = {"model": model, "name": model}  # "name": Ollama before 0.4 reads it
        answer = await request_json(
            self._session, ep, "POST", "/api/show", body, plain=True, credentials=self._credentials
        )
        if not isinstance(answer, dict):
            raise UpstreamError("POST /api/show: not an Ollama model description")
        return answer

    async def pull(self, ep: Endpoint, model: str) -> AsyncIterator[dict[str, Any]]:
        """Pull ``model`` from the Ollama library onto that server; yields Ollama's progress objects
        (``status``, and ``digest``/``total``/``completed`` while a layer downloads). A failure, before or
        during the stream, raises (``NotFound`` for a model the library does not have)."""
        body = {"model": model, "name": model, "stream": True}  # "name": Ollama before 0.4 reads it
        async for event in stream_ndjson(self._session, ep, "/api/pull", body, credentials=self._credentials):
            yield event

    async def copy(self, ep: Endpoint, source: str, destination: str) -> None:
        body = {"source": source, "destination": destination}
        await request_json(
            self._session,
            ep,
            "POST",
            "/api/copy",
            body,
            timeout=LONG_TIMEOUT,
            plain=True,
            credentials=self._credentials,
        )

    async def delete(self, ep: Endpoint, model: str) -> None:
        await request_json(
            self._session,
            ep,
            "DELETE",
            "/api/delete",
            {"model": model, "name": model},
            timeout=LONG_TIMEOUT,
            plain=True,
            credentials=self._credentials,
        )
