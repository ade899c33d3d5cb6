"""``superollama finetune create|ls|show|cancel|events``: a client of ``/v1/fine_tuning/jobs`` (with the
CLI's API key, so what it lists is that key's). ``create`` takes a JSONL path (uploaded first, purpose
``fine-tune``) or a file id."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from superollama.cli.main import Context, api, cli, pass_ctx
from superollama.cli.render import console, print_json, print_table

__all__ = ["finetune"]

_JOBS = "/v1/fine_tuning/jobs"
_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
_FINAL = ("succeeded", "failed", "cancelled")


def _file_id(ctx: Context, ref: str) -> str:
    path = Path(ref)
    if ref.startswith("file-") and not path.exists():
        return ref
    with path.open("rb") as f:
        uploaded = ctx.client.request(
            "POST", "/v1/files", files={"file": (path.name, f)}, data={"purpose": "fine-tune"}
        )
    return str(uploaded["id"])


def _print_job(job: dict[str, Any]) -> None:
    hp = job.get("hyperparameters") or {}
    rows = [
        ("id", job["id"]),
        ("status", job["status"]),
        ("model", job["model"]),
        ("fine_tuned_model", job.get("fine_tuned_model") or "-"),
        ("trained_tokens", job.get("trained_tokens") or 0),
        ("training_file", job["training_file"]),
        ("hyperparameters", ", ".join(f"{k}={v}" for k, v in hp.items() if v is not None)),
    ]
    if job.get("error"):
        rows.append(("error", job["error"].get("message", "")))
    print_table(console, ("FIELD", "VALUE"), rows)


@cli.group()
def finetune() -> None:
    """LoRA fine-tuning jobs (OpenAI's /v1/fine_tuning/jobs); the result is a new version."""


@finetune.command("create")
@click.argument("training")
@click.option("--model", required=True, help="The base version, e.g. smollm2:135m.")
@click.option("--validation", help="A validation JSONL path or file id.")
@click.option("--suffix", help="Part of the new version's name.")
@click.option("--epochs", "n_epochs", type=int, help="Passes over the training file.")
@click.option("--batch-size", type=int, help="Examples per step.")
@click.option("--lr-multiplier", "learning_rate_multiplier", type=float, help="Learning rate multiplier.")
@click.option("--rank", type=int, help="LoRA rank.")
@click.option("--alpha", type=int, help="LoRA alpha.")
@click.option("--target-module", "target_modules", multiple=True, help="Module to adapt (repeat).")
@click.option("--checkpoint-every", type=int, help="Steps between checkpoints.")
@click.option("--seed", type=int, help="Seed of the example order and the adapter's init.")
@click.option("--wait", is_flag=True, help="Follow the job until it ends, printing its events.")
@_JSON
@pass_ctx
@api
def finetune_create(
    ctx: Context,
    /,
    training: str,
    *,
    model: str,
    validation: str | None,
    suffix: str | None,
    seed: int | None,
    wait: bool,
    as_json: bool,
    **knobs: Any,
) -> None:
    """Fine-tune MODEL on TRAINING (a chat JSONL path, uploaded first, or a file id)."""
    hyperparameters = {k: v for k, v in knobs.items() if v not in (None, ())}
    if "target_modules" in hyperparameters:
        hyperparameters["target_modules"] = list(hyperparameters["target_modules"])
    body: dict[str, Any] = {
        "model": model,
        "training_file": _file_id(ctx, training),
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    }
    if validation:
        body["validation_file"] = _file_id(ctx, validation)
    if suffix:
        body["suffix"] = suffix
    if seed is not None:
        body["seed"] = seed
    job = ctx.client.request("POST", _JOBS, json=body)
    if wait:
        job = _follow(ctx, job["id"], quiet=as_json)
    if as_json:
        print_json(job)
    else:
        _print_job(job)


def _follow(ctx: Context, job_id: str, *, quiet: bool) -> dict[str, Any]:
    seen: set[str] = set()
    while True:
        job: dict[str, Any] = ctx.client.request("GET", f"{_JOBS}/{job_id}")
        page = ctx.client.request("GET", f"{_JOBS}/{job_id}/events", params={"limit": 100})
        for event in reversed(page["data"]):
            if event["id"] not in seen:
                seen.add(event["id"])
                if not quiet:
                    console.print(event["message"], highlight=False)
        if job["status"] in _FINAL:
            return job
        time.sleep(1.0)


@finetune.command("ls")
@click.option("--limit", type=int, default=20, show_default=True)
@_JSON
@pass_ctx
@api
def finetune_ls(ctx: Context, limit: int, as_json: bool) -> None:
    """List fine-tuning jobs, newest first."""
    page = ctx.client.request("GET", _JOBS, params={"limit": limit})
    if as_json:
        print_json(page["data"])
        return
    rows = [
        (j["id"], j["status"], j["model"], j.get("fine_tuned_model") or "-", j.get("trained_tokens") or 0)
        for j in page["data"]
    ]
    print_table(console, ("ID", "STATUS", "MODEL", "FINE-TUNED MODEL", "TOKENS"), rows)


@finetune.command("show")
@click.argument("job_id")
@_JSON
@pass_ctx
@api
def finetune_show(ctx: Context, job_id: str, as_json: bool) -> None:
    """One job: status, result, hyperparameters, error."""
    job = ctx.client.request("GET", f"{_JOBS}/{job_id}")
    if as_json:
        print_json(job)
    else:
        _print_job(job)


@finetune.command("cancel")
@click.argument("job_id")
@pass_ctx
@api
def finetune_cancel(ctx: Context, job_id: str) -> None:
    """Cancel a job (its training worker is stopped)."""
    job = ctx.client.request("POST", f"{_JOBS}/{job_id}/cancel")
    console.print(f"{job['id']}: {job['status']}", highlight=False)


@finetune.command("events")
@click.argument("job_id")
@click.option("--limit", type=int, default=50, show_default=True)
@_JSON
@pass_ctx
@api
def finetune_events(ctx: Context, job_id: str, limit: int, as_json: bool) -> None:
    """A job's events, oldest first (loss per step among them)."""
    page = ctx.client.request("GET", f"{_JOBS}/{job_id}/events", params={"limit": limit})
    events = list(reversed(page["data"]))
    if as_json:
        print_json(events)
        return
    rows = [(e["created_at"], e["level"], e.get("type") or "message", e["message"]) for e in events]
    print_table(console, ("CREATED", "LEVEL", "TYPE", "MESSAGE"), rows)
