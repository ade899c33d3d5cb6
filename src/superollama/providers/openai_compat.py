"""Any OpenAI-compatible server: vLLM, llama.cpp's server, text-generation-webui, LM Studio, LocalAI,
OpenAI itself. Models come from ``GET /v1/models``."""

from __future__ import annotations

from typing import ClassVar

import aiohttp

from superollama.core import Endpoint
from superollama.errors import UpstreamError
from superollama.providers.http import get_json, strip_suffix

__all__ = ["OpenAICompatProvider"]


class OpenAICompatProvider:
    kind: ClassVar[str] = "openai"

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def relay_base(self, url: str) -> str:
        return strip_suffix(url, "/v1")

    async def models(self, ep: Endpoint) -> list[str]:
        body = await get_json(self._session, ep, "/v1/models")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise UpstreamError(f"{ep.base_url}/v1/models: not an OpenAI model list")
        return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]
