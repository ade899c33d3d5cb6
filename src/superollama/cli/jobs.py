"""``superollama jobs``: long operations (pulls, moves): list, watch, cancel."""

from __future__ import annotations

import sys

import click
import orjson

from superollama.cli.client import ApiError
from superollama.cli.main import Context, api, cli, console, err_console, pass_ctx
from superollama.cli.render import age, print_table, show_progress

__all__ = ["jobs"]


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def jobs(click_ctx: click.Context, as_json: bool) -> None:
    """List long operations (pulls, moves); `jobs cancel ID`, `jobs watch ID`."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    try:
        items = ctx.client.request("GET", "/admin/v1/jobs")["jobs"]
    except ApiError as exc:
        err_console.print(f"[red]Error:[/red] {exc.message}", highlight=False)
        sys.exit(1)
    if as_json:
        click.echo(orjson.dumps(items, option=orjson.OPT_INDENT_2).decode())
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
@pass_ctx
@api
def cancel_job(ctx: Context, job_id: str) -> None:
    """Cancel a running job."""
    job = ctx.client.request("POST", f"/admin/v1/jobs/{job_id}/cancel")
    console.print(f"{job['id']}: {job['state']}")


@jobs.command("watch")
@click.argument("job_id")
@pass_ctx
@api
def watch_job(ctx: Context, job_id: str) -> None:
    """Follow a job's progress until it ends."""
    final = show_progress(console, ctx.client.stream_lines("GET", f"/admin/v1/jobs/{job_id}/watch"))
    console.print(f"{job_id}: {final.get('status')}")
