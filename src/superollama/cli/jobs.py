"""``superollama jobs``: long operations (pulls, moves): list, watch, cancel."""

from __future__ import annotations

import click
import orjson

from superollama.cli.client import ApiError
from superollama.cli.main import Context, api, cli, console, fail, pass_ctx
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
        fail(exc)
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
    """Cancel a running job (a job that already ended says how it ended, with exit status 1)."""
    job = ctx.client.request("POST", f"/admin/v1/jobs/{job_id}/cancel")
    console.print(f"{job['id']}: {job['state']}")


@jobs.command("watch")
@click.argument("job_id")
@pass_ctx
@api
def watch_job(ctx: Context, job_id: str) -> None:
    """Follow a job's progress until it ends (exit status 1 when it did not succeed)."""
    final = show_progress(console, ctx.client.stream_lines("GET", f"/admin/v1/jobs/{job_id}/watch"))
    if final.get("status") != "success":
        raise ApiError(0, f"job {job_id} {final.get('status')}: {failure_reason(final)}")
    console.print(f"{job_id}: {final.get('status')}")


def failure_reason(final: dict[str, object]) -> str:
    """What a job's final progress line says went wrong."""
    error = final.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or final.get("status"))
    return str(error or final.get("status") or "the stream ended without a final line")
