"""The llama.cpp runtime: one ``llamacpp_worker`` child process (xllamacpp) per instance, OpenAI routes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from superollama.core import Artifact, InstanceHandle, InstanceRecord, InstanceSpec
from superollama.errors import ModelLoadFailed
from superollama.runtimes.process import SpawnFn, WorkerLaunch, kill_leftover, spawn_worker

__all__ = ["WORKER_MODULE", "LlamaCppRuntime"]

log = logging.getLogger(__name__)

WORKER_MODULE = "superollama.runtimes.llamacpp_worker"


class LlamaCppRuntime:
    """Runs GGUF versions with llama.cpp's own server (implements ``core.Runtime``).

    The instance serves chat, completions and pooled embeddings (``options["embedding"]``, default True)
    under ``spec.version`` as the model name. Worker logs go to ``<log_dir>/<instance_id>.log``.
    """

    name: ClassVar[str] = "llamacpp"
    provider: ClassVar[str] = "openai"

    def __init__(
        self,
        log_dir: Path,
        *,
        ctx: int = 8192,
        parallel: int = 4,
        threads: int = -1,
        ready_timeout: float = 120.0,
        stop_timeout: float = 10.0,
        python: str = sys.executable,
        spawn: SpawnFn = spawn_worker,
    ) -> None:
        self.log_dir = log_dir
        self.ctx = ctx
        self.parallel = parallel
        self.threads = threads
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self._spawn = spawn

    def accepts(self, artifact: Artifact) -> bool:
        return artifact.format.lower() == "gguf"

    def command(self, spec: InstanceSpec) -> tuple[str, ...]:
        """The worker's command line for ``spec``."""
        embedding = _flag(spec.options, "embedding", default=True)
        return (
            self.python,
            "-m",
            WORKER_MODULE,
            "--instance-id",
            spec.instance_id,
            "--model",
            str(spec.artifact.path),
            "--alias",
            spec.version,
            "--ctx",
            str(self.ctx),
            "--parallel",
            str(self.parallel),
            "--threads",
            str(self.threads),
            "--embedding" if embedding else "--no-embedding",
            "--parent-pid",
            str(os.getpid()),
        )

    def log_path(self, instance_id: str) -> Path:
        return self.log_dir / f"{instance_id}.log"

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        if not self.accepts(spec.artifact):
            raise ModelLoadFailed(
                f"{spec.instance_id}: the llamacpp runtime cannot serve format {spec.artifact.format!r}"
            )
        launch = WorkerLaunch(
            argv=self.command(spec),
            instance_id=spec.instance_id,
            log_path=self.log_path(spec.instance_id),
            served_name=spec.version,
            provider=self.provider,
            ready_timeout=self.ready_timeout,
        )
        return await self._spawn(launch)

    async def adopt(self, record: InstanceRecord) -> InstanceHandle | None:
        """Clean replacement: stop a leftover worker of ours for ``record.id``; never touch another PID."""
        if record.pid is None:
            return None
        if await kill_leftover(record.pid, record.id, self.stop_timeout, module=WORKER_MODULE):
            log.info("instance %s: stopped leftover worker pid %d", record.id, record.pid)
        return None


def _flag(options: Mapping[str, Any], key: str, *, default: bool) -> bool:
    value = options.get(key, default)
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)
