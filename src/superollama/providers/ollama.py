"""An existing Ollama server. Its models come from ``GET /api/tags``; OpenAI-protocol requests go to its
OpenAI-compatible ``/v1`` routes (Ollama serves chat, completions and embeddings there)."""

from __future__ import annotations

from typing import ClassVar

import aiohttp

from superollama.core import Endpoint
from superollama.errors import UpstreamError
from superollama.providers.http import get_json, strip_suffix

__all__ = ["OllamaProvider"]


class OllamaProvider:
    kind: ClassVar[str] = "ollama"

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def relay_base(self, url: str) -> str:
        return strip_suffix(url, "/v1", "/api")

    async def models(self, ep: Endpoint) -> list[str]:
        body = await get_json(self._session, ep, "/api/tags")
        models = body.get("models") if isinstance(body, dict) else None
        if not isinstance(models, list):
            raise UpstreamError(f"{ep.base_url}/api/tags: not an Ollama model list")
        return [str(m.get("name") or m.get("model")) for m in models if isinstance(m, dict)]
