"""Providers: one module per backend protocol (discovery and health; requests are relayed)."""

from __future__ import annotations

import aiohttp

from superollama.core import CredentialSource, Provider
from superollama.providers.ollama import OllamaProvider
from superollama.providers.openai_compat import OpenAICompatProvider
from superollama.providers.tgi import TgiProvider

__all__ = ["OllamaProvider", "OpenAICompatProvider", "TgiProvider", "builtin_providers"]


def builtin_providers(
    session: aiohttp.ClientSession, credentials: CredentialSource | None = None
) -> dict[str, Provider]:
    """The built-in providers; ``credentials``: where they find an endpoint's credential at send time."""
    providers: list[Provider] = [
        OpenAICompatProvider(session, credentials),
        OllamaProvider(session, credentials),
        TgiProvider(session, credentials),
    ]
    return {p.kind: p for p in providers}
