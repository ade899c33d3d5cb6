"""Providers: one module per backend protocol (discovery and health; requests are relayed).
They are registered through the plugin hooks (``superollama.plugins.builtin``), like a plugin's."""

from __future__ import annotations

from superollama.providers.ollama import OllamaProvider
from superollama.providers.openai_compat import OpenAICompatProvider
from superollama.providers.tgi import TgiProvider

__all__ = ["OllamaProvider", "OpenAICompatProvider", "TgiProvider"]
