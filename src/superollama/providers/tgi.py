"""Hugging Face text-generation-inference: one model per server (``GET /info``), chat through its
OpenAI-compatible Messages API (``/v1/chat/completions``).

Health is ``GET /health`` as well as ``/info``: when TGI's model shard dies, its router goes on answering
``/info`` while ``/health`` turns 503 and every generation fails, so ``/info`` alone would keep routing to
a server that cannot answer.

Streams report their usage when asked (``stream_options.include_usage``, TGI 3.x: a last chunk with no
choices); older versions ignore the field (serde skips unknown fields), so asking is always safe."""

from __future__ import annotations

from typing import Any, ClassVar

import aiohttp

from superollama.core import CredentialSource, Endpoint
from superollama.errors import NotFound, UpstreamError
from superollama.providers._show import scalars, show_shape
from superollama.providers.http import check, get_json, strip_suffix

__all__ = ["TgiProvider"]

_VISION = {"image-text-to-text", "visual-question-answering", "image-to-text"}


class TgiProvider:
    kind: ClassVar[str] = "tgi"

    def __init__(self, session: aiohttp.ClientSession, credentials: CredentialSource | None = None) -> None:
        self._session = session
        self._credentials = credentials  # resolves an endpoint's credential at send time

    def relay_base(self, url: str) -> str:
        return strip_suffix(url, "/v1")

    async def models(self, ep: Endpoint) -> list[str]:
        model_id = _model_id(await self._info(ep), ep)
        await check(self._session, ep, "/health", credentials=self._credentials)
        return [model_id]

    async def show(self, ep: Endpoint, model: str) -> dict[str, Any]:
        """The server's one model in Ollama's ``/api/show`` shape, from ``/info`` (``NotFound`` for any
        other name): its context (``max_total_tokens``) is ``num_ctx``, ``/info`` is in ``model_info``."""
        info = await self._info(ep)
        if _model_id(info, ep) != model:
            raise NotFound(f"model '{model}' not found")
        tag = info.get("model_pipeline_tag")
        context = info.get("max_total_tokens")
        return show_shape(
            model,
            capabilities=["completion", "vision"] if tag in _VISION else ["completion"],
            model_info={"general.name": model, **scalars("tgi", info)},
            parameters={"num_ctx": context if isinstance(context, int) else None},
        )

    async def _info(self, ep: Endpoint) -> dict[str, Any]:
        info = await get_json(self._session, ep, "/info", credentials=self._credentials)
        if not isinstance(info, dict):
            raise UpstreamError("GET /info: not TGI's server info")
        return info


def _model_id(info: dict[str, Any], ep: Endpoint) -> str:
    model_id = info.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise UpstreamError("GET /info: no model_id")
    return model_id
