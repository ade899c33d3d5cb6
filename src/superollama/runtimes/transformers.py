"""The transformers runtime: one ``transformers_worker`` child process per instance, OpenAI routes.

The agent process never imports torch, transformers or sentence-transformers: only the worker does, and
a worker that cannot import them fails its start with ``pip install 'superollama[transformers]'``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from superollama.core import Artifact, InstanceHandle, InstanceRecord, InstanceSpec
from superollama.errors import ModelLoadFailed
from superollama.runtimes.process import SpawnFn, WorkerLaunch, adopt_worker, spawn_worker

__all__ = ["TRANSFORMERS_WORKER", "TransformersRuntime"]

log = logging.getLogger(__name__)

TRANSFORMERS_WORKER = "superollama.runtimes.transformers_worker"
_DTYPES = ("auto", "float32", "bfloat16", "float16")
_TASKS = ("auto", "chat", "embedding", "rerank")


class TransformersRuntime:
    """Runs Hugging Face model folders (safetensors) with transformers (implements ``core.Runtime``).

    A folder holding a causal LM serves chat and completions (its tokenizer's chat template); a
    sentence-transformers folder serves embeddings; a cross-encoder (a one-label sequence classifier)
    serves ``/v1/rerank``. ``spec.device`` is ``cpu`` or ``cuda:N``. Per-instance
    ``spec.options`` override the defaults: ``dtype`` (auto, float32, bfloat16, float16) and ``task``
    (auto, chat, embedding, rerank). Worker logs go to ``<log_dir>/<instance_id>.log``; ``env`` is added
    to the worker's environment.
    """

    name: ClassVar[str] = "transformers"
    provider: ClassVar[str] = "openai"

    def __init__(
        self,
        log_dir: Path,
        *,
        dtype: str = "auto",
        threads: int = 0,
        max_queue: int = 64,
        ready_timeout: float = 180.0,
        stop_timeout: float = 10.0,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        spawn: SpawnFn = spawn_worker,
        guardian_pid: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, not {dtype!r}")
        self.log_dir = log_dir
        self.dtype = dtype
        self.threads = threads
        self.max_queue = max_queue
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self.env = dict(env or {})
        self._spawn = spawn
        self.guardian_pid = guardian_pid  # workers outlive the agent and die with it (``process``)
        self.host = host  # the worker's listening address: a cluster node's own (``cluster.actors``)

    def accepts(self, artifact: Artifact) -> bool:
        """A safetensors version whose path is a model folder (config.json and weights side by side), or a
        LoRA adapter version whose base has an HF folder here (``adapter_base``)."""
        if artifact.format.lower() == "lora":
            return adapter_base(artifact) is not None
        return artifact.format.lower() == "safetensors" and artifact.path.is_dir()

    def command(self, spec: InstanceSpec) -> tuple[str, ...]:
        """The worker's command line for ``spec``; a bad ``dtype``/``task`` option is a ModelLoadFailed."""
        dtype = str(spec.options.get("dtype", self.dtype))
        task = str(spec.options.get("task", "auto"))
        if dtype not in _DTYPES:
            raise ModelLoadFailed(
                f"{spec.instance_id}: dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}"
            )
        if task not in _TASKS:
            raise ModelLoadFailed(
                f"{spec.instance_id}: task must be one of {', '.join(_TASKS)}, not {task!r}"
            )
        model, adapter = spec.artifact.path, None
        if spec.artifact.format.lower() == "lora":
            base = adapter_base(spec.artifact)
            if base is None:
                raise ModelLoadFailed(f"{spec.instance_id}: the base of {spec.version} has no HF folder here")
            model, adapter = base, spec.artifact.path
        return (
            self.python,
            "-m",
            TRANSFORMERS_WORKER,
            "--instance-id",
            spec.instance_id,
            "--model",
            str(model),
            *(("--adapter", str(adapter)) if adapter is not None else ()),
            "--alias",
            spec.version,
            "--device",
            spec.device,
            "--dtype",
            dtype,
            "--task",
            task,
            "--threads",
            str(self.threads),
            "--max-queue",
            str(self.max_queue),
            "--host",
            self.host,
            "--parent-pid",
            str(os.getpid()),
            *(("--guardian-pid", str(self.guardian_pid)) if self.guardian_pid is not None else ()),
        )

    def log_path(self, instance_id: str) -> Path:
        return self.log_dir / f"{instance_id}.log"

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        if spec.artifact.format.lower() not in ("safetensors", "lora"):
            raise ModelLoadFailed(
                f"{spec.instance_id}: the transformers runtime cannot serve format {spec.artifact.format!r}"
            )
        launch = WorkerLaunch(
            argv=self.command(spec),
            instance_id=spec.instance_id,
            log_path=self.log_path(spec.instance_id),
            served_name=spec.version,
            provider=self.provider,
            ready_timeout=self.ready_timeout,
            env={**os.environ, **self.env} if self.env else None,
        )
        return await self._spawn(launch)

    async def adopt(self, record: InstanceRecord) -> InstanceHandle | None:
        """Take back a healthy worker started for this runtime's guardian (``serve --workers N``: it
        outlived the agent process); else stop a leftover worker of ours. Never touches another PID."""
        return await adopt_worker(
            record,
            module=TRANSFORMERS_WORKER,
            provider=self.provider,
            guardian_pid=self.guardian_pid,
            grace=self.stop_timeout,
        )


def adapter_base(artifact: Artifact) -> Path | None:
    """The HF folder of a LoRA adapter version's base: the base version's own folder (a safetensors base),
    or the float folder its GGUF was dequantised into for training (``metadata["hf_base"]``, on this
    node); None when neither is here."""
    meta = artifact.metadata
    if meta.get("adapter") != "lora":
        return None
    candidates = []
    if meta.get("base_format") == "safetensors" and meta.get("base_path"):
        candidates.append(Path(str(meta["base_path"])))
    if meta.get("hf_base"):
        candidates.append(Path(str(meta["hf_base"])))
    return next((c for c in candidates if (c / "config.json").is_file()), None)
