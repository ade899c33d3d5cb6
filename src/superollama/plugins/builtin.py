"""The built-in runtimes, providers and sources, registered through the same hooks as any plugin.

The runtimes are listed in the order they are tried for a version (see ``plugins/specs.py``): vLLM first
(it suits a node only with a GPU and vLLM installed), then transformers, then llama.cpp. Heavy imports
(xllamacpp, torch, vLLM) happen in the runtimes' worker processes; the rest when a hook is called, so
that loading the plugins (the CLI does it at every start) stays cheap.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from superollama.plugins.specs import hookimpl

if TYPE_CHECKING:
    import aiohttp

    from superollama.core import CredentialSource, Provider, Runtime
    from superollama.settings import Settings
    from superollama.store import Source

__all__ = ["register_providers", "register_runtimes", "register_sources"]


@hookimpl
def register_runtimes(register: Callable[[Runtime], None], settings: Settings) -> None:
    from superollama.runtimes import LlamaCppRuntime, TransformersRuntime, VllmRuntime

    logs = settings.home / "logs"
    register(
        VllmRuntime(
            logs,
            python=settings.vllm_python or sys.executable,
            max_model_len=settings.vllm_max_model_len,
            cpu_kvcache_gib=settings.vllm_cpu_kvcache_gib,
        )
    )
    register(TransformersRuntime(logs, dtype=settings.transformers_dtype))
    register(
        LlamaCppRuntime(
            log_dir=logs,
            ctx=settings.llamacpp_ctx,
            parallel=settings.llamacpp_parallel,
            threads=settings.llamacpp_threads,
            ready_timeout=settings.ready_timeout,
            stop_timeout=settings.stop_timeout,
        )
    )


@hookimpl
def register_providers(
    register: Callable[[Provider], None],
    session: aiohttp.ClientSession,
    credentials: CredentialSource | None,
) -> None:
    from superollama.providers import OllamaProvider, OpenAICompatProvider, TgiProvider

    register(OpenAICompatProvider(session, credentials))
    register(OllamaProvider(session, credentials))
    register(TgiProvider(session, credentials))


@hookimpl
def register_sources(register: Callable[[Source], None], settings: Settings) -> None:
    """The store's own sources (file, https, http, hf, ollama, ollama-dir), bound by the pull timeouts."""
    import aiohttp

    from superollama.store import RetryPolicy, default_sources

    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.pull_connect_timeout, sock_read=settings.pull_read_timeout
    )
    retry = RetryPolicy(stall=settings.pull_stall_timeout)
    for source in default_sources(ollama_registry=settings.ollama_registry, retry=retry, timeout=timeout):
        register(source)
