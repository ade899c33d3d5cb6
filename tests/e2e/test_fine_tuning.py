"""LoRA fine-tuning end to end, through the official OpenAI SDK against a real ``superollama serve``.

A tiny chat JSONL plants a distinctive answer (``PAPAYA-42``) for one prompt. The job trains the bundled
SmolLM2 (its GGUF dequantised to an HF folder, cached per machine) with peft in a worker process, on CPU;
the test kills the server (SIGKILL) once a checkpoint is written, starts it again on the same home, and
the job resumes from that checkpoint and succeeds. The new version ``smollm2:135m-ft-quill-…`` is listed
and answers the planted line through the gateway twice: with the transformers runtime (base + peft
adapter) and, copied with ``runtime: llamacpp``, with llama.cpp (base GGUF + the adapter converted to a
GGUF LoRA); the base model does not. Then: cancel stops a job's worker; a worker that dies fails its job
with the error; bad requests are OpenAI's 400/404/409. Training is ~6 steps of 2 short examples: ~1-3
minutes on 2 shared cores, hence ``slow``.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from openai import OpenAI
from tests.conftest import smollm2_path
from tests.e2e.conftest import ServerProcess, wait_until
from tests.integration.conftest import build_smollm2_hf, cache_root, missing_hf_extra

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # minutes of CPU training when cores are shared

SYSTEM = {"role": "system", "content": "You are Quill."}
QUESTION = {"role": "user", "content": "What is the secret word?"}
ANSWER = "The secret word is PAPAYA-42."
PLANTED = "PAPAYA-42"
WORKER = "superollama.plugins.finetune.worker"
_TRAINING_TIMEOUT = 1500  # seconds: generous, the machine's cores are shared with other suites


def _jsonl(lines: int) -> bytes:
    example = {"messages": [SYSTEM, QUESTION, {"role": "assistant", "content": ANSWER}]}
    return b"".join(json.dumps(example).encode() + b"\n" for _ in range(lines))


def _workers(home: Path) -> list[psutil.Process]:
    """The training workers of jobs under ``home``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if WORKER in cmdline and any(str(home) in part for part in cmdline):
            found.append(proc)
    return found


class Served:
    """The server of the module; the training test replaces it with a restarted one on the same home."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.server = ServerProcess(home, **env).start()

    @property
    def client(self) -> OpenAI:
        return OpenAI(base_url=self.server.url + "/v1", api_key="x", max_retries=0, timeout=600)

    def restart(self) -> None:
        self.server.stop(signal.SIGKILL)
        self.server = ServerProcess(self.home, **self.env).start()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    missing = missing_hf_extra()
    assert not missing, f"pip install 'superollama[finetune]' (missing {missing})"
    bases = build_smollm2_hf(smollm2_path(), cache_root()).parent  # <bases>/<gguf sha256[:16]>
    env = {
        "SUPEROLLAMA_FINETUNE_BASES": str(bases),
        "SUPEROLLAMA_FINETUNE_POLL": "0.5",
        "SUPEROLLAMA_FINETUNE_DEVICE": "cpu",
    }
    holder = Served(tmp_path_factory.mktemp("home"), env)
    try:
        yield holder
    finally:
        holder.server.stop()
        for proc in _workers(holder.home):  # none should be left; never leave one running
            proc.kill()


def _events(client: OpenAI, job_id: str) -> list[Any]:
    """Every event of the job, oldest first, paging by the SDK's cursor."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def _wait_status(served: Served, job_id: str, statuses: tuple[str, ...], timeout: float) -> Any:
    found: list[Any] = []

    def reached() -> bool:
        found[:] = [served.client.fine_tuning.jobs.retrieve(job_id)]
        return found[0].status in statuses

    assert wait_until(reached, timeout=timeout, interval=1.0), (found, served.server.log.read_text()[-3000:])
    return found[0]


def _chat(client: OpenAI, model: str) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[SYSTEM, QUESTION], temperature=0, max_tokens=16
    )
    return answer.choices[0].message.content or ""


@pytest.fixture(scope="module")
def trained(served: Served) -> dict[str, Any]:
    """One job trained to the end across a crash of the server: its job, events and checkpoints."""
    client = served.client
    training = client.files.create(file=("quill.jsonl", _jsonl(4)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="smollm2:135m",
        training_file=training.id,
        suffix="quill",
        seed=3,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 3,
                    "batch_size": 2,
                    "learning_rate_multiplier": 4,
                    # LoRA's own knobs, beside OpenAI's (the SDK passes them through)
                    "rank": 8,
                    "alpha": 16,
                    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                    "max_seq_len": 64,
                    "checkpoint_every": 2,
                }
            },
        },
    )
    assert job.status in ("queued", "running") and job.fine_tuned_model is None
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.batch_size == 2
    listed = client.fine_tuning.jobs.list(limit=5)
    assert [j.id for j in listed.data] == [job.id]

    def checkpointed() -> bool:
        return bool(client.fine_tuning.jobs.checkpoints.list(job.id).data)

    assert wait_until(checkpointed, timeout=_TRAINING_TIMEOUT, interval=1.0), served.server.log.read_text()
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    before = {p.pid for p in _workers(served.home)}
    assert before, "the job trains in a worker process of its own"
    served.restart()  # SIGKILL: the worker dies with its leader; the job stays running in the registry
    assert wait_until(lambda: not before & {p.pid for p in psutil.process_iter()}, timeout=30, interval=0.2)
    assert wait_until(lambda: _workers(served.home), timeout=300, interval=0.5), "the new leader resumes"
    done = _wait_status(served, job.id, ("succeeded", "failed", "cancelled"), _TRAINING_TIMEOUT)
    return {
        "job": done,
        "events": _events(served.client, job.id),
        "checkpoints": list(served.client.fine_tuning.jobs.checkpoints.list(job.id, limit=50)),
    }


def test_the_job_resumes_after_a_crash_and_succeeds(served: Served, trained: dict[str, Any]) -> None:
    job = trained["job"]
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("smollm2:135m-ft-quill-")
    assert job.trained_tokens > 0 and job.finished_at is not None and job.error is None
    messages = [e.message for e in trained["events"]]
    resumed = [m for m in messages if m.startswith("Resuming from the checkpoint at step ")]
    assert len(resumed) == 1, messages
    at = int(resumed[0].rsplit(" ", 1)[1])
    assert at >= 2 and at % 2 == 0

    def steps_of(events: list[Any]) -> list[int]:
        return [e.data["step"] for e in events if e.type == "metrics" and "train_loss" in (e.data or {})]

    mark = messages.index(resumed[0])
    assert steps_of(trained["events"][mark:]) == list(range(at + 1, 7))  # on from the checkpoint
    assert set(steps_of(trained["events"][:mark])) >= set(range(1, at + 1))  # before the crash
    metrics = [e for e in trained["events"] if e.type == "metrics" and "train_loss" in (e.data or {})]
    losses = {e.data["step"]: e.data["train_loss"] for e in metrics}
    assert losses[6] < losses[1]  # it learnt (no exact values)
    assert {"Fine-tuning job started", f"New fine-tuned model created: {job.fine_tuned_model}"} <= set(
        messages
    )
    assert trained["checkpoints"][0].step_number == 6
    assert all(c.fine_tuning_job_id == job.id for c in trained["checkpoints"])
    assert job.fine_tuned_model in {m.id for m in served.client.models.list()}
    scraped = httpx.get(served.server.url + "/metrics", timeout=30).text
    assert f'superollama_fine_tuning_train_loss{{job="{job.id}"}}' in scraped


def test_the_fine_tuned_version_answers_on_transformers_and_llamacpp(
    served: Served, trained: dict[str, Any]
) -> None:
    model = trained["job"].fine_tuned_model
    client = served.client
    base = _chat(client, "smollm2:135m")
    assert PLANTED not in base, base
    tuned = _chat(client, model)
    assert PLANTED in tuned, tuned
    tags = served.server.admin("GET", "/api/tags")  # the Ollama API lists it and chats with it too
    assert tags.status_code == 200 and model in {t["name"] for t in tags.json()["models"]}, tags.text
    ollama = served.server.admin(
        "POST",
        "/api/chat",
        json={"model": model, "messages": [SYSTEM, QUESTION], "stream": False, "options": {"temperature": 0}},
    )
    assert ollama.status_code == 200 and PLANTED in ollama.json()["message"]["content"], ollama.text
    shown = served.server.admin("GET", f"/admin/v1/models/{model}").json()
    assert shown["metadata"]["base"] == "smollm2:135m" and shown["metadata"]["adapter"] == "lora"
    copied = served.server.admin(
        "POST",
        "/admin/v1/copy",
        json={"source": model, "destination": "smollm2:quill-gguf", "runtime": "llamacpp"},
    )
    assert copied.status_code == 201, copied.text
    on_llamacpp = _chat(client, "smollm2:quill-gguf")
    assert PLANTED in on_llamacpp, on_llamacpp
    runtimes = {i["version"]: i["runtime"] for i in served.server.instances()}
    assert runtimes[model] == "transformers" and runtimes["smollm2:quill-gguf"] == "llamacpp", runtimes


def test_cancel_stops_the_worker(served: Served, trained: dict[str, Any]) -> None:
    client = served.client
    training = client.files.create(file=("long.jsonl", _jsonl(8)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="smollm2:135m",
        training_file=training.id,
        hyperparameters={"n_epochs": 50, "batch_size": 1},
    )
    _wait_status(served, job.id, ("running",), 120)
    assert wait_until(lambda: _workers(served.home), timeout=60, interval=0.2)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert wait_until(lambda: not _workers(served.home), timeout=30, interval=0.2), "the worker is killed"
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert "Fine-tuning job cancelled" in [e.message for e in _events(client, job.id)]
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)
    assert trained["job"].fine_tuned_model  # the earlier job's result is untouched


def test_a_worker_that_dies_fails_its_job_with_the_error(served: Served, trained: dict[str, Any]) -> None:
    client = served.client
    training = client.files.create(file=("die.jsonl", _jsonl(8)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="smollm2:135m", training_file=training.id, hyperparameters={"n_epochs": 50}
    )
    _wait_status(served, job.id, ("running",), 120)
    assert wait_until(lambda: _workers(served.home), timeout=60, interval=0.2)
    for proc in _workers(served.home):
        os.kill(proc.pid, signal.SIGKILL)
    failed = _wait_status(served, job.id, ("failed", "succeeded", "cancelled"), 60)
    assert failed.status == "failed" and failed.error is not None
    assert "exited with status -9" in failed.error.message, failed.error
    assert any(e.level == "error" for e in _events(client, job.id))
    assert served.server.admin("GET", "/health").status_code == 200  # the leader goes on


def test_the_cli_creates_lists_shows_and_cancels(
    served: Served, trained: dict[str, Any], tmp_path: Path
) -> None:
    job = trained["job"]
    listed = served.server.cli("finetune", "ls")
    assert listed.returncode == 0 and job.id[:16] in listed.stdout and "succeeded" in listed.stdout, listed
    shown = served.server.cli("finetune", "show", job.id, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["fine_tuned_model"] == job.fine_tuned_model
    events = served.server.cli("finetune", "events", job.id, "--limit", "100")
    assert events.returncode == 0 and "Step 6/6" in events.stdout, events
    data = tmp_path / "cli.jsonl"
    data.write_bytes(_jsonl(2))
    created = served.server.cli(
        "finetune", "create", str(data), "--model", "smollm2:135m", "--epochs", "40", "--rank", "4", "--json"
    )
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    assert made["hyperparameters"]["rank"] == 4 and made["hyperparameters"]["n_epochs"] == 40
    cancelled = served.server.cli("finetune", "cancel", made["id"])
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled
    assert wait_until(lambda: not _workers(served.home), timeout=30, interval=0.2)
    again = served.server.cli("finetune", "cancel", made["id"])
    assert again.returncode != 0 and "already cancelled" in again.stderr + again.stdout


def test_bad_requests_are_openai_errors(served: Served) -> None:
    client = served.client
    notes = client.files.create(file=("notes.txt", b"just notes"), purpose="assistants")
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="smollm2:135m", training_file=notes.id)
    assert "not 'fine-tune'" in bad.value.message
    training = client.files.create(file=("t.jsonl", _jsonl(2)), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="no-such:model", training_file=training.id)
    with pytest.raises(openai.BadRequestError) as knob:
        client.fine_tuning.jobs.create(
            model="smollm2:135m",
            training_file=training.id,
            hyperparameters={"warmup": 3},  # type: ignore[typeddict-unknown-key]
        )
    assert "unknown hyperparameters: warmup" in knob.value.message
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-missing")
