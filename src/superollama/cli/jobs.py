"""``superollama jobs``: long operations (pulls, moves): list, watch, cancel."""

from __future__ import annotations

from collections.abc import Mapping

import click

from superollama.cli.main import Context, api, cli, fail, json_option, pass_ctx
from superollama.cli.render import age, console, last_event, print_json, print_table, show_progress
from superollama.client import SuperollamaError

__all__ = ["jobs"]


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
def jobs(click_ctx: click.Context, as_json: bool) -> None:
    """List long operations (pulls, moves); `jobs cancel ID`, `jobs watch ID`."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    try:
        items = ctx.client.jobs.list()
    except SuperollamaError as exc:
        fail(exc)
    if as_json:
        print_json(items)
        return
    rows = [
        (
            j["id"],
            j["kind"],
            j["target"],
            j["state"],
            j["progress"].get("status", ""),
            j["error"] or "",
            age(j["created_at"]),
        )
        for j in items
    ]
    print_table(console, ("JOB", "KIND", "TARGET", "STATE", "PROGRESS", "ERROR", "STARTED"), rows)


@jobs.command("cancel")
@click.argument("job_id")
@json_option
@pass_ctx
@api
def cancel_job(ctx: Context, job_id: str, as_json: bool) -> None:
    """Cancel a running job (a job that already ended says how it ended, with exit status 1)."""
    job = ctx.client.jobs.cancel(job_id)
    if as_json:
        print_json(job)
        return
    console.print(f"{job['id']}: {job['state']}")


@jobs.command("watch")
@click.argument("job_id")
@json_option
@pass_ctx
@api
def watch_job(ctx: Context, job_id: str, as_json: bool) -> None:
    """Follow a job's progress until it ends (exit status 1 when it did not succeed); with --json, print
    its final progress line only."""
    events = ctx.client.jobs.watch(job_id)
    final = last_event(events) if as_json else show_progress(console, events)
    if final.get("status") != "success":
        raise SuperollamaError(f"job {job_id} {final.get('status')}: {failure_reason(final)}")
    if as_json:
        print_json(final)
        return
    console.print(f"{job_id}: {final.get('status')}")


def failure_reason(final: Mapping[str, object]) -> str:
    """What a job's final progress line says went wrong."""
    error = final.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or final.get("status"))
    return str(error or final.get("status") or "the stream ended without a final line")
