"""Runtimes: how to start, stop and health-check a backend process on a node (implement ``core.Runtime``).

Exports load lazily, so ``import superollama.runtimes`` stays cheap (no aiohttp, psutil or xllamacpp);
``xllamacpp`` is imported only by the worker child process (``llamacpp_worker``), torch, transformers and
sentence-transformers only by ``transformers_worker``, and vLLM only in its own server process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from superollama.runtimes.llamacpp import WORKER_MODULE, LlamaCppRuntime
    from superollama.runtimes.process import (
        ProcessHandle,
        SpawnFn,
        WorkerLaunch,
        is_our_process,
        kill_leftover,
        log_tail,
        spawn_worker,
    )
    from superollama.runtimes.transformers import TRANSFORMERS_WORKER, TransformersRuntime
    from superollama.runtimes.vllm import VLLM_SUPERVISOR, VllmHandle, VllmRuntime, vllm_available

__all__ = [
    "TRANSFORMERS_WORKER",
    "VLLM_SUPERVISOR",
    "WORKER_MODULE",
    "LlamaCppRuntime",
    "ProcessHandle",
    "SpawnFn",
    "TransformersRuntime",
    "VllmHandle",
    "VllmRuntime",
    "WorkerLaunch",
    "is_our_process",
    "kill_leftover",
    "log_tail",
    "spawn_worker",
    "vllm_available",
]

_WHERE = {
    "WORKER_MODULE": "llamacpp",
    "LlamaCppRuntime": "llamacpp",
    "ProcessHandle": "process",
    "SpawnFn": "process",
    "WorkerLaunch": "process",
    "is_our_process": "process",
    "kill_leftover": "process",
    "log_tail": "process",
    "spawn_worker": "process",
    "TRANSFORMERS_WORKER": "transformers",
    "TransformersRuntime": "transformers",
    "VLLM_SUPERVISOR": "vllm",
    "VllmHandle": "vllm",
    "VllmRuntime": "vllm",
    "vllm_available": "vllm",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
