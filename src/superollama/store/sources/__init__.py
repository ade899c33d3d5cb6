"""Sources of model files: the ``Source`` seam, its plan types and the built-in implementations."""

from __future__ import annotations

import aiohttp

from superollama.store.sources.base import (
    MEDIA_FILE,
    Body,
    LinkableSource,
    RangedSource,
    RetryPolicy,
    Source,
    SourceFile,
    SourcePlan,
    safe_relpath,
    split_scheme,
)
from superollama.store.sources.file import FileSource
from superollama.store.sources.hf import DEFAULT_HF_ENDPOINT, HfSource
from superollama.store.sources.http import HttpSource, PlainHttpSource
from superollama.store.sources.ollama import DEFAULT_OLLAMA_REGISTRY, OllamaSource, parse_ollama_name
from superollama.store.sources.ollama_dir import OllamaDirSource, list_ollama_models

__all__ = [
    "DEFAULT_HF_ENDPOINT",
    "DEFAULT_OLLAMA_REGISTRY",
    "MEDIA_FILE",
    "Body",
    "FileSource",
    "HfSource",
    "HttpSource",
    "LinkableSource",
    "OllamaDirSource",
    "OllamaSource",
    "PlainHttpSource",
    "RangedSource",
    "RetryPolicy",
    "Source",
    "SourceFile",
    "SourcePlan",
    "default_sources",
    "list_ollama_models",
    "parse_ollama_name",
    "safe_relpath",
    "split_scheme",
]


def default_sources(
    *,
    ollama_registry: str = DEFAULT_OLLAMA_REGISTRY,
    hf_endpoint: str | None = None,
    hf_token: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: aiohttp.ClientTimeout | None = None,
) -> list[Source]:
    """The built-in sources: file, https, http, hf, ollama, ollama-dir."""
    return [
        FileSource(),
        HttpSource(retry=retry, timeout=timeout),
        PlainHttpSource(retry=retry, timeout=timeout),
        HfSource(endpoint=hf_endpoint, token=hf_token, retry=retry, timeout=timeout),
        OllamaSource(registry=ollama_registry, retry=retry, timeout=timeout),
        OllamaDirSource(),
    ]
