"""Providers: one module per backend protocol (discovery and health; requests are relayed)."""

from __future__ import annotations

import aiohttp

from superollama.core import Provider
from superollama.providers.ollama import OllamaProvider
from superollama.providers.openai_compat import OpenAICompatProvider
from superollama.providers.tgi import TgiProvider

__all__ = ["OllamaProvider", "OpenAICompatProvider", "TgiProvider", "builtin_providers"]


def builtin_providers(session: aiohttp.ClientSession) -> dict[str, Provider]:
    providers: list[Provider] = [
        OpenAICompatProvider(session),
        OllamaProvider(session),
        TgiProvider(session),
    ]
    return {p.kind: p for p in providers}
