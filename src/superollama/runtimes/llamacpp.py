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
from superollama.runtimes.process import SpawnFn, WorkerLaunch, adopt_worker, spawn_worker

__all__ = ["WORKER_MODULE", "LlamaCppRuntime", "is_reranker"]

log = logging.getLogger(__name__)

WORKER_MODULE = "superollama.runtimes.llamacpp_worker"


class LlamaCppRuntime:
    """Runs GGUF versions with llama.cpp's own server (implements ``core.Runtime``).

    The instance serves chat, completions and pooled embeddings (``options["embedding"]``, default True)
    under ``spec.version`` as the model name. A cross-encoder GGUF (``is_reranker``) is served in
    llama.cpp's reranking mode instead (``/v1/rerank``; ``options["reranking"]`` overrides the guess).
    Worker logs go to ``<log_dir>/<instance_id>.log``.
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
        guardian_pid: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.log_dir = log_dir
        self.ctx = ctx
        self.parallel = parallel
        self.threads = threads
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self._spawn = spawn
        self.guardian_pid = guardian_pid  # workers outlive the agent and die with it (``process``)
        self.host = host  # the worker's listening address: a cluster node's own (``cluster.actors``)

    def accepts(self, artifact: Artifact) -> bool:
        """A GGUF file, or a LoRA adapter version with its GGUF form over a GGUF base (``lora_files``)."""
        return artifact.format.lower() == "gguf" or lora_files(artifact) is not None

    def command(self, spec: InstanceSpec) -> tuple[str, ...]:
        """The worker's command line for ``spec``."""
        embedding = _flag(spec.options, "embedding", default=True)
        reranking = _flag(spec.options, "reranking", default=is_reranker(spec.artifact.metadata))
        model, lora = spec.artifact.path, None
        if spec.artifact.format.lower() != "gguf" and (files := lora_files(spec.artifact)) is not None:
            model, lora = files
        return (
            self.python,
            "-m",
            WORKER_MODULE,
            "--instance-id",
            spec.instance_id,
            "--model",
            str(model),
            *(("--lora", str(lora)) if lora is not None else ()),
            "--alias",
            spec.version,
            "--ctx",
            str(self.ctx),
            "--parallel",
            str(self.parallel),
            "--threads",
            str(self.threads),
            "--embedding" if embedding else "--no-embedding",
            *(("--reranking",) if reranking else ()),
            *(("--mmproj", str(spec.artifact.projector)) if spec.artifact.projector is not None else ()),
            "--host",
            self.host,
            "--parent-pid",
            str(os.getpid()),
            *(("--guardian-pid", str(self.guardian_pid)) if self.guardian_pid is not None else ()),
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
        """Take back a healthy worker started for this runtime's guardian (``serve --workers N``: it
        outlived the agent process); else stop a leftover worker of ours. Never touches another PID."""
        return await adopt_worker(
            record,
            module=WORKER_MODULE,
            provider=self.provider,
            guardian_pid=self.guardian_pid,
            grace=self.stop_timeout,
        )


_POOLING_RANK = 4  # llama_pooling_type LLAMA_POOLING_TYPE_RANK


def is_reranker(metadata: Mapping[str, Any]) -> bool:
    """Whether a GGUF's header (``store.gguf.as_metadata``) says cross-encoder: its pooling is "rank"
    (Qwen3 and Jina rerankers), or it has a classifier head with one output label (what llama.cpp's
    converter writes for a ``*ForSequenceClassification`` with one label: bge-reranker, ms-marco)."""
    info = metadata.get("model_info")
    arch = metadata.get("architecture")
    if not isinstance(info, Mapping) or not isinstance(arch, str):
        return False
    if info.get(f"{arch}.pooling_type") == _POOLING_RANK:
        return True
    labels = info.get(f"{arch}.classifier.output_labels")
    return isinstance(labels, list) and len(labels) == 1


def lora_files(artifact: Artifact) -> tuple[Path, Path] | None:
    """(base GGUF, adapter GGUF) of a LoRA adapter version (``metadata["adapter"] == "lora"``, its folder
    holding ``metadata["gguf_adapter"]``) whose base is a GGUF file (``base_path``, set by the controller);
    None for anything else."""
    meta = artifact.metadata
    name, base = meta.get("gguf_adapter"), meta.get("base_path")
    if meta.get("adapter") != "lora" or meta.get("base_format") != "gguf" or not name or not base:
        return None
    adapter = artifact.path / str(name)
    return (Path(str(base)), adapter) if adapter.is_file() else None


def _flag(options: Mapping[str, Any], key: str, *, default: bool) -> bool:
    value = options.get(key, default)
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)
