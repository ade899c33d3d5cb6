"""Super Ollama: a model gateway that provisions, manages and serves models behind the OpenAI API.

``superollama.Client`` and ``superollama.AsyncClient`` (the admin API's Python client) are imported on
first use, so that ``superollama serve`` does not load httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "SuperollamaError", "__version__"]

if TYPE_CHECKING:
    from superollama.client import AsyncClient, Client, SuperollamaError

_LAZY = frozenset({"AsyncClient", "Client", "SuperollamaError"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import superollama.client

        return getattr(superollama.client, name)
    raise AttributeError(f"module 'superollama' has no attribute {name!r}")
