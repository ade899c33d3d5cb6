"""Hugging Face text-generation-inference: one model per server (``GET /info``), chat through its
OpenAI-compatible Messages API (``/v1/chat/completions``).

Health is ``GET /health`` as well as ``/info``: when TGI's model shard dies, its router goes on answering
``/info`` while ``/health`` turns 503 and every generation fails, so ``/info`` alone would keep routing to
a server that cannot answer."""

from __future__ import annotations

from typing import ClassVar

import aiohttp

from superollama.core import Endpoint
from superollama.errors import UpstreamError
from superollama.providers.http import check, get_json, strip_suffix

__all__ = ["TgiProvider"]


class TgiProvider:
    kind: ClassVar[str] = "tgi"

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def relay_base(self, url: str) -> str:
        return strip_suffix(url, "/v1")

    async def models(self, ep: Endpoint) -> list[str]:
        info = await get_json(self._session, ep, "/info")
        model_id = info.get("model_id") if isinstance(info, dict) else None
        if not isinstance(model_id, str) or not model_id:
            raise UpstreamError(f"{ep.base_url}/info: no model_id")
        await check(self._session, ep, "/health")
        return [model_id]
