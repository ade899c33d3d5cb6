"""Fine-tuning jobs: what ``/v1/fine_tuning/jobs`` does, and the runner that trains them.

Any gateway creates, lists, reads and cancels jobs (rows in the registry). Only the reconciler leader runs
them, one at a time, each in a worker process of its own (``worker.py``): the leader owns the job, the
worker only trains, so a worker that dies makes the job ``failed`` with its error and the leader goes on.
The leader records what the worker reports — loss per step as ``metrics`` events, checkpoints — and at
the end adds the adapter to the store and the catalog as a version (``<base>-ft-<id>``, format ``lora``,
``metadata.base`` naming its base) that the transformers runtime (peft) and llama.cpp (``--lora``) serve.

Statuses: ``validating_files`` → ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``.
A leader that stops (a restart, a lost lock) leaves its job ``running`` with its checkpoints on disk; the
next leader starts the worker again, which resumes from the last checkpoint. A cancel on any gateway ends
the job in the registry; the leader sees that at the worker's next report and kills the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from superollama.control import Controller
from superollama.control.feed import Nudge
from superollama.errors import Conflict, InvalidRequest, NotFound, SuperOllamaError
from superollama.plugins.rag.files import FileService, check_fine_tune_jsonl
from superollama.registry import Registry
from superollama.registry._finetune import FINAL_STATUSES, CheckpointRecord, FineTuneRecord
from superollama.store import ModelStore
from superollama.telemetry import Counter, Gauge

__all__ = ["DEFAULTS", "FineTuning", "resolve_hyperparameters"]

log = logging.getLogger("superollama.finetune")

WORKER_MODULE = "superollama.plugins.finetune.worker"
BASE_LEARNING_RATE = 1e-3  # times learning_rate_multiplier: a LoRA's usual rate, not the base model's
DEFAULTS: Mapping[str, Any] = {
    "n_epochs": 3,
    "batch_size": 8,
    "learning_rate_multiplier": 1.0,
    "rank": 8,
    "alpha": 16,
    "target_modules": ["q_proj", "v_proj"],
    "max_seq_len": 512,
}
_OPENAI_KNOBS = ("n_epochs", "batch_size", "learning_rate_multiplier")
_OUR_KNOBS = ("rank", "alpha", "target_modules", "max_seq_len", "checkpoint_every")
_STDERR_TAIL = 2000
_METRIC = "superollama_fine_tuning_"


def _positive_int(value: Any, name: str, default: int | None) -> int | None:
    if value is None or value == "auto":
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"hyperparameters.{name} must be a positive integer or 'auto'", param=name)
    return value


def resolve_hyperparameters(given: Mapping[str, Any], examples: int) -> dict[str, Any]:
    """OpenAI's three knobs (``auto`` resolved) and LoRA's; ``InvalidRequest`` naming a bad one."""
    unknown = sorted(set(given) - set(_OPENAI_KNOBS) - set(_OUR_KNOBS))
    if unknown:
        raise InvalidRequest(f"unknown hyperparameters: {', '.join(unknown)}", param="hyperparameters")
    out: dict[str, Any] = {}
    out["n_epochs"] = _positive_int(given.get("n_epochs"), "n_epochs", DEFAULTS["n_epochs"])
    batch = _positive_int(given.get("batch_size"), "batch_size", None)
    out["batch_size"] = batch if batch is not None else max(1, min(DEFAULTS["batch_size"], examples))
    multiplier = given.get("learning_rate_multiplier", "auto")
    if multiplier == "auto" or multiplier is None:
        multiplier = DEFAULTS["learning_rate_multiplier"]
    if isinstance(multiplier, bool) or not isinstance(multiplier, int | float) or multiplier <= 0:
        raise InvalidRequest(
            "hyperparameters.learning_rate_multiplier must be a positive number or 'auto'",
            param="learning_rate_multiplier",
        )
    out["learning_rate_multiplier"] = float(multiplier)
    out["learning_rate"] = BASE_LEARNING_RATE * float(multiplier)
    out["rank"] = _positive_int(given.get("rank"), "rank", DEFAULTS["rank"])
    out["alpha"] = _positive_int(given.get("alpha"), "alpha", DEFAULTS["alpha"])
    modules = given.get("target_modules", DEFAULTS["target_modules"])
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) and m for m in modules):
        raise InvalidRequest(
            "hyperparameters.target_modules must be a non-empty list of module names", param="target_modules"
        )
    out["target_modules"] = list(modules)
    out["max_seq_len"] = _positive_int(given.get("max_seq_len"), "max_seq_len", DEFAULTS["max_seq_len"])
    every = _positive_int(given.get("checkpoint_every"), "checkpoint_every", None)
    steps_per_epoch = math.ceil(examples / out["batch_size"])
    out["checkpoint_every"] = every if every is not None else steps_per_epoch
    return out


def _hyperparameters_of(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """``hyperparameters`` (the older shape) or ``method.supervised.hyperparameters`` (the newer)."""
    method = body.get("method")
    given = body.get("hyperparameters")
    if method is not None:
        if not isinstance(method, Mapping) or method.get("type") != "supervised":
            raise InvalidRequest("method.type must be 'supervised' (LoRA)", param="method")
        supervised = method.get("supervised") or {}
        nested = supervised.get("hyperparameters") if isinstance(supervised, Mapping) else None
        if nested is not None:
            if given:
                raise InvalidRequest(
                    "give hyperparameters either at the top level or in method.supervised, not both",
                    param="hyperparameters",
                )
            given = nested
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise InvalidRequest("hyperparameters must be an object", param="hyperparameters")
    return given


class _WorkerFailed(Exception):
    """The training worker exited without finishing (its status and the end of its log)."""


class _Run:
    """The job the leader is running now."""

    def __init__(self, job: FineTuneRecord) -> None:
        self.job = job
        self.process: asyncio.subprocess.Process | None = None
        self.cancelled = False


class FineTuning:
    def __init__(
        self,
        registry: Registry,
        controller: Controller,
        store: ModelStore,
        files: FileService,
        *,
        home: Path,
        bases: Path,
        device: Callable[[], str],
        is_leader: Callable[[], bool],
        poll: float = 2.0,
        threads: int = 0,
        python: str = sys.executable,
        nudge: Nudge | None = None,
    ) -> None:
        """``home``: jobs' folders go under ``home/fine_tuning``; ``bases``: where GGUF bases are
        dequantised to HF folders (kept: the transformers runtime serves adapters over them); ``device``:
        where the next job trains (``cpu``, ``cuda:0``), asked at its start; ``poll``: how often a
        gateway that is not running a job looks for one to run when it is the leader; ``nudge``: the change
        feed's for the ``fine_tuning`` topic: with it, a leader with no job to run sleeps until a job is
        added or changed anywhere, instead of looking every ``poll`` seconds."""
        self._repo = registry.fine_tuning
        self._controller = controller
        self._store = store
        self._files = files
        self._root = home / "fine_tuning"
        self._bases = bases
        self._device = device
        self._is_leader = is_leader
        self._poll = poll
        self._threads = threads
        self._python = python
        self._wake = nudge or Nudge(watched=False)
        self._run: _Run | None = None
        self._task: asyncio.Task[None] | None = None
        self._loss = Gauge(_METRIC + "train_loss", "Training loss at the latest step, by job.", ("job",))
        self._steps = Counter(_METRIC + "steps", "Training steps done, by job.", ("job",))
        self._tokens = Counter(_METRIC + "trained_tokens", "Tokens trained on, by job.", ("job",))

    # -- the API ----------------------------------------------------------------------------------------
    async def create(self, body: Mapping[str, Any], *, key_id: str | None) -> FineTuneRecord:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model is required (the base version, e.g. smollm2:135m)", param="model")
        base = await self._registry_version(model)
        if base.format not in ("gguf", "safetensors") or base.metadata.get("adapter"):
            raise InvalidRequest(
                f"{model} cannot be fine-tuned: a base must be a GGUF or safetensors model", param="model"
            )
        training = await self._training_file(body.get("training_file"), "training_file", key_id)
        validation_id = body.get("validation_file")
        if validation_id is not None:
            await self._training_file(validation_id, "validation_file", key_id)
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            raise InvalidRequest("suffix must be a string of at most 64 characters", param="suffix")
        seed = body.get("seed")
        if seed is None:
            seed = random.randrange(2**31)
        elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InvalidRequest("seed must be a non-negative integer", param="seed")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise InvalidRequest("metadata must be an object", param="metadata")
        examples = check_fine_tune_jsonl(await self._files.read(training), training.filename)
        hyperparameters = resolve_hyperparameters(_hyperparameters_of(body), examples)
        job = await self._repo.add(
            FineTuneRecord(
                id=f"ftjob-{uuid.uuid4().hex[:24]}",
                key_id=key_id,
                model=base.name,
                training_file=training.id,
                validation_file=validation_id,
                suffix=suffix,
                seed=seed,
                hyperparameters=hyperparameters,
                metadata={str(k): str(v) for k, v in metadata.items()},
            )
        )
        await self._repo.add_event(job.id, "Validating training file: " + training.id)
        await self._repo.add_event(job.id, f"Files validated ({examples} training examples)")
        await self._repo.update(job.id, status="queued")
        await self._repo.add_event(job.id, "Fine-tuning job queued")
        self._wake.set()
        return await self.get(job.id, key_id=key_id)

    async def get(self, job_id: str, *, key_id: str | None) -> FineTuneRecord:
        job = await self._repo.get(job_id, key_id=key_id)
        if job is None:
            raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
        return job

    async def jobs(self, *, key_id: str | None, after: str | None, limit: int) -> list[FineTuneRecord]:
        return await self._repo.jobs(key_id=key_id, after=after, limit=limit)

    async def cancel(self, job_id: str, *, key_id: str | None) -> FineTuneRecord:
        job = await self.get(job_id, key_id=key_id)
        if job.status in FINAL_STATUSES:
            raise Conflict(
                f"the fine-tuning job {job_id} has already {job.status}", param="fine_tuning_job_id"
            )
        if await self._repo.update(job_id, status="cancelled"):
            await self._repo.add_event(job_id, "Fine-tuning job cancelled")
        run = self._run
        if run is not None and run.job.id == job_id:
            run.cancelled = True
            await _kill(run.process)
        return await self.get(job_id, key_id=key_id)

    async def events(self, job_id: str, *, key_id: str | None, after: str | None, limit: int) -> list[Any]:
        await self.get(job_id, key_id=key_id)
        cursor = None
        if after:
            try:
                cursor = int(after.removeprefix("ftevent-"))
            except ValueError:
                raise InvalidRequest(f"after must be an event id (got {after!r})", param="after") from None
        return await self._repo.events(job_id, after=cursor, limit=limit)

    async def checkpoints(
        self, job_id: str, *, key_id: str | None, after: str | None, limit: int
    ) -> list[CheckpointRecord]:
        await self.get(job_id, key_id=key_id)
        return await self._repo.checkpoints(job_id, after=after, limit=limit)

    def families(self) -> Sequence[Counter]:
        """Prometheus families (``/metrics``): loss, steps and tokens of the jobs this leader ran."""
        return (self._loss, self._steps, self._tokens)

    async def _registry_version(self, name: str) -> Any:
        try:
            return (await self._controller.show(name)).version
        except NotFound:
            raise NotFound(f"The model {name!r} does not exist", param="model") from None

    async def _training_file(self, file_id: Any, param: str, key_id: str | None) -> Any:
        if not isinstance(file_id, str) or not file_id:
            raise InvalidRequest(f"{param} is required (a file id)", param=param)
        record = await self._files.repo.file(file_id, key_id=key_id)
        if record is None:
            raise InvalidRequest(f"{param}: no such file: {file_id}", param=param)
        if record.purpose != "fine-tune":
            raise InvalidRequest(
                f"{param}: {file_id} has purpose {record.purpose!r}, not 'fine-tune'", param=param
            )
        return record

    # -- the runner (the leader) -----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="fine-tuning")

    async def close(self) -> None:
        """Stop the worker and leave the job ``running``: the next leader resumes it from its checkpoint."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._run is not None:
            await _kill(self._run.process)

    async def _loop(self) -> None:
        while True:
            settled = False  # leader, and no job left to run: only a change in the registry brings one
            try:
                if self._is_leader():
                    jobs = await self._repo.unfinished()
                    for job in jobs:
                        if not self._is_leader():
                            break
                        await self._run_job(job)
                    settled = not jobs
            except asyncio.CancelledError:
                raise
            except SuperOllamaError as exc:
                log.warning("fine-tuning runner: %s", exc.message)
            except Exception:
                log.exception("fine-tuning runner failed; trying again")
            await self._wake.sleep(self._poll, due=None if settled else self._poll)

    async def _run_job(self, job: FineTuneRecord) -> None:
        current = await self._repo.get(job.id, any_key=True)
        if current is None or current.status in FINAL_STATUSES:
            return
        run = self._run = _Run(current)
        try:
            await self._train(run)
        except asyncio.CancelledError:
            raise
        except SuperOllamaError as exc:
            await self._fail(run, exc.message, code=exc.code or "error")
        except _WorkerFailed as exc:
            await self._fail(run, str(exc), code="worker_failed")
        except Exception as exc:
            log.exception("fine-tuning job %s failed", job.id)
            await self._fail(run, f"{type(exc).__name__}: {exc}")
        finally:
            await _kill(run.process)
            self._run = None

    async def _fail(self, run: _Run, message: str, *, code: str = "error") -> None:
        if run.cancelled:
            return
        error = {"code": code, "message": message, "param": None}
        if await self._repo.update(run.job.id, status="failed", error=error):
            await self._repo.add_event(run.job.id, f"Fine-tuning job failed: {message}", level="error")

    async def _train(self, run: _Run) -> None:
        job = run.job
        folder = self._root / job.id
        folder.mkdir(parents=True, exist_ok=True)
        resuming = job.status == "running"
        if not await self._repo.update(job.id, status="running"):
            return
        if not resuming:
            await self._repo.add_event(job.id, "Fine-tuning job started")
        spec = await self._spec(job, folder)
        (folder / "spec.json").write_text(json.dumps(spec))
        stderr_path = folder / "worker.log"
        with stderr_path.open("ab") as stderr:
            run.process = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                WORKER_MODULE,
                str(folder / "spec.json"),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,  # cancel kills its whole group (the GGUF converter too)
                env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"},
            )
        done: dict[str, Any] | None = None
        assert run.process.stdout is not None
        async for line in run.process.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if not isinstance(report, dict):
                continue
            if report.get("event") == "done":
                done = report
            elif not await self._record(run, report):
                await _kill(run.process)  # ended elsewhere (cancelled on another gateway)
                return
        code = await run.process.wait()
        if run.cancelled:
            return
        if code != 0 or done is None:
            tail = _tail(stderr_path)
            raise _WorkerFailed(f"the training worker exited with status {code}: {tail}")
        await self._finish(run, done, spec)

    async def _spec(self, job: FineTuneRecord, folder: Path) -> dict[str, Any]:
        base = await self._registry_version(job.model)
        path = await asyncio.to_thread(self._store.model_path, job.model)
        training = await self._files.repo.file(job.training_file, key_id=job.key_id)
        if training is None:
            raise InvalidRequest(f"the training file {job.training_file} was deleted", param="training_file")
        spec: dict[str, Any] = {
            "job": job.id,
            "model": job.model,
            "base_hf": str(path) if base.format == "safetensors" else None,
            "base_gguf": str(path) if base.format == "gguf" else None,
            "base_digest": base.digest,
            "bases": str(self._bases),
            "training_file": str(self._files.blobs.path(training.digest)),
            "validation_file": None,
            "out": str(folder),
            "seed": job.seed,
            "device": await asyncio.to_thread(self._device),
            "threads": self._threads,
            "parent_pid": os.getpid(),
            "hyperparameters": dict(job.hyperparameters),
            "checkpoint_every": job.hyperparameters.get("checkpoint_every"),
        }
        if job.validation_file:
            valid = await self._files.repo.file(job.validation_file, key_id=job.key_id)
            if valid is not None:
                spec["validation_file"] = str(self._files.blobs.path(valid.digest))
        return spec

    async def _record(self, run: _Run, report: Mapping[str, Any]) -> bool:
        """One report of the worker as events, checkpoints and metrics; False: the job ended elsewhere."""
        job_id = run.job.id
        kind = report.get("event")
        if kind == "step":
            step, loss = int(report["step"]), float(report["train_loss"])
            data = {
                "step": step,
                "total_steps": int(report["total_steps"]),
                "train_loss": loss,
                "epoch": report.get("epoch"),
            }
            if not await self._repo.update(job_id, trained_tokens=int(report["tokens"])):
                return False
            await self._repo.add_event(
                job_id,
                f"Step {step}/{data['total_steps']}: training loss={loss:.4f}",
                type="metrics",
                data=data,
            )
            self._loss.set((job_id,), loss)
            self._steps.labels(job_id).value = step
            self._tokens.labels(job_id).value = int(report["tokens"])
        elif kind == "checkpoint":
            step = int(report["step"])
            await self._repo.add_checkpoint(
                CheckpointRecord(
                    id=f"ftckpt-{uuid.uuid4().hex[:24]}",
                    job_id=job_id,
                    step=step,
                    metrics={"step": step, "train_loss": float(report["train_loss"])},
                    path=str(report["path"]),
                )
            )
            await self._repo.add_event(job_id, f"Checkpoint created at step {step}")
        elif kind == "validation":
            await self._repo.add_event(
                job_id,
                f"Step {report['step']}: validation loss={float(report['valid_loss']):.4f}",
                type="metrics",
                data={"step": report["step"], "valid_loss": report["valid_loss"]},
            )
        elif kind == "message":
            await self._repo.add_event(job_id, str(report.get("message", "")))
        current = await self._repo.get(job_id, any_key=True)
        return current is not None and current.status not in FINAL_STATUSES

    async def _finish(self, run: _Run, done: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
        job = run.job
        base = await self._registry_version(job.model)
        adapter = Path(str(done["adapter"]))
        files = await asyncio.to_thread(_files_of, adapter)
        gguf_name = None
        if done.get("gguf"):
            gguf_name = "adapter.gguf"
            files[gguf_name] = Path(str(done["gguf"]))
        tag = f"{base.tag}-ft-{job.suffix + '-' if job.suffix else ''}{job.id.removeprefix('ftjob-')[:8]}"
        name = f"{base.model}:{tag}"
        hf_base = spec.get("base_hf") or str(
            Path(str(spec["bases"])) / str(base.digest).removeprefix("sha256:")[:16]
        )
        metadata: dict[str, Any] = {
            "adapter": "lora",
            "base": base.name,
            "base_digest": base.digest,
            "hf_base": hf_base,
            "gguf_adapter": gguf_name,
            "fine_tuning_job": job.id,
            "hyperparameters": dict(job.hyperparameters),
            "architecture": base.metadata.get("architecture"),
            "context_length": base.metadata.get("context_length"),
            "chat_template": base.metadata.get("chat_template"),
        }
        version = await self._controller.add_folder(
            name, files, format="lora", metadata=metadata, source=f"fine-tune://{job.id}", actor="fine-tuning"
        )
        if await self._repo.update(
            job.id,
            status="succeeded",
            fine_tuned_model=version.name,
            trained_tokens=int(done["trained_tokens"]),
        ):
            await self._repo.add_event(job.id, f"New fine-tuned model created: {version.name}")
            await self._repo.add_event(job.id, "The job has successfully completed")
        with contextlib.suppress(OSError):  # the version has the adapter now; checkpoints stay for resume
            shutil.rmtree(adapter)


def _files_of(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


async def _kill(process: asyncio.subprocess.Process | None) -> None:
    """SIGKILL the worker's process group (it and the converter it may run), then reap it."""
    if process is None or process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), 10)


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and "Warning" not in ln]
    return "\n".join(lines[-5:])[-_STDERR_TAIL:] or "(no output)"
