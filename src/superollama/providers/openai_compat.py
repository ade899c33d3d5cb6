"""Any OpenAI-compatible server: vLLM, llama.cpp's server, text-generation-webui, LM Studio, LocalAI,
OpenAI itself. Models come from ``GET /v1/models``; a model's description (``show``) is its entry there:
llama.cpp adds ``meta`` (``n_params``, ``n_ctx_train``, …), vLLM ``max_model_len``."""

from __future__ import annotations

from typing import Any, ClassVar

import aiohttp

from superollama.core import CredentialSource, Endpoint
from superollama.errors import NotFound, UpstreamError
from superollama.providers._show import scalars, show_shape
from superollama.providers.http import get_json, strip_suffix

__all__ = ["OpenAICompatProvider"]

_EMBEDDING_TYPES = {"embedding", "embeddings", "embed"}


class OpenAICompatProvider:
    kind: ClassVar[str] = "openai"

    def __init__(self, session: aiohttp.ClientSession, credentials: CredentialSource | None = None) -> None:
        self._session = session
        self._credentials = credentials  # resolves an endpoint's credential at send time

    def relay_base(self, url: str) -> str:
        return strip_suffix(url, "/v1")

    async def models(self, ep: Endpoint) -> list[str]:
        return [str(m["id"]) for m in await self._entries(ep)]

    async def show(self, ep: Endpoint, model: str) -> dict[str, Any]:
        """``model`` in Ollama's ``/api/show`` shape, from its ``/v1/models`` entry (``NotFound`` if the
        server does not list it)."""
        entry = next((m for m in await self._entries(ep) if m["id"] == model), None)
        if entry is None:
            raise NotFound(f"model '{model}' not found")
        meta = entry.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        count = meta.get("n_params")
        context = entry.get("max_model_len")
        listed = {k: v for k, v in entry.items() if k not in {"id", "object"}}
        info = {"general.name": model, **scalars("openai", listed), **scalars("openai.meta", meta)}
        caps = entry.get("capabilities")
        hints = [entry.get("type"), *(caps if isinstance(caps, list) else ())]
        embedding = any(isinstance(h, str) and h.lower() in _EMBEDDING_TYPES for h in hints)
        return show_shape(
            model,
            capabilities=["embedding"] if embedding else ["completion"],
            model_info=info,
            parameters={"num_ctx": context if isinstance(context, int) else None},
            parameter_count=count if isinstance(count, int) else None,
            created=entry.get("created"),
        )

    async def _entries(self, ep: Endpoint) -> list[dict[str, Any]]:
        body = await get_json(self._session, ep, "/v1/models", credentials=self._credentials)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise UpstreamError("GET /v1/models: not an OpenAI model list")
        return [{**m, "id": str(m["id"])} for m in data if isinstance(m, dict) and m.get("id")]
