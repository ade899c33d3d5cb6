"""LoRA fine-tuning: OpenAI's ``/v1/fine_tuning/jobs``, trained by the reconciler leader with ``peft`` in a
worker process per job, the result a version the transformers runtime and llama.cpp serve (``service``).
``install`` adds it to an app; torch, transformers and peft are imported by the worker only
(``pip install 'superollama[finetune]'``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from superollama.agent.inventory import nvidia_smi_gpus
from superollama.control import Controller
from superollama.control.feed import Nudge
from superollama.plugins.finetune.routes import FineTuningRoutes
from superollama.plugins.finetune.service import FineTuning
from superollama.plugins.rag.files import FileService
from superollama.registry import Registry
from superollama.settings import Settings
from superollama.store import ModelStore

__all__ = ["FineTuning", "choose_device", "install"]


def choose_device(setting: str) -> str:
    """``setting`` unless ``auto``; then the GPU with the most free memory (as instances are placed, from
    ``nvidia-smi``), else ``cpu``. Blocking (runs ``nvidia-smi``)."""
    if setting != "auto":
        return setting
    gpus = nvidia_smi_gpus()
    if not gpus:
        return "cpu"
    return max(gpus, key=lambda g: g.memory_total - g.memory_used).device


def install(
    app: web.Application,
    registry: Registry,
    controller: Controller,
    store: ModelStore,
    settings: Settings,
    *,
    is_leader: Callable[[], bool],
    nudge: Nudge | None = None,
) -> FineTuning:
    """The routes on ``app`` and the runner (started here; ``close`` it with the app)."""
    service = FineTuning(
        registry,
        controller,
        store,
        FileService(registry.rag, settings.home / "files"),
        home=settings.home,
        bases=settings.finetune_bases or Path(settings.home) / "fine_tuning" / "bases",
        device=lambda: choose_device(settings.finetune_device),
        is_leader=is_leader,
        poll=settings.finetune_poll,
        threads=settings.finetune_threads,
        nudge=nudge,
    )
    FineTuningRoutes(service).register(app)
    service.start()
    return service
