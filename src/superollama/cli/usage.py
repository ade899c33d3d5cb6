"""``superollama usage``: the usage ledger, aggregated by key, model or day (or the rows themselves)."""

from __future__ import annotations

from typing import Any

import click

from superollama.cli.main import Context, api, cli, json_option, pass_ctx
from superollama.cli.render import console, print_json, print_table
from superollama.telemetry.usage import REQUEST_COLUMNS, SUMMARY_COLUMNS, rows_csv

__all__ = ["usage"]


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


@cli.command()
@click.option(
    "--by",
    type=click.Choice(["key", "model", "day", "request"]),
    default="model",
    show_default=True,
    help="Group by API key (prefix), model or UTC day; 'request' lists the rows themselves.",
)
@click.option("--since", default="24h", show_default=True, help="Start: 30m, 24h, 7d, 2w or an ISO time.")
@click.option("--until", help="End (exclusive): same forms as --since; default: now.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV output.")
@json_option
@pass_ctx
@api
def usage(ctx: Context, *, by: str, since: str, until: str | None, as_csv: bool, as_json: bool) -> None:
    """Requests, tokens, cost and latency from the usage ledger."""
    rows = ctx.client.usage.get(by=by, since=since, until=until or None)["rows"]
    if as_json:
        print_json(rows)
        return
    if as_csv:
        click.echo(rows_csv(rows, REQUEST_COLUMNS if by == "request" else SUMMARY_COLUMNS), nl=False)
        return
    if by == "request":
        table = [
            (
                r["created_at"][:19],
                r["key_prefix"] or "-",
                r["model"],
                r["status"],
                _num(r["prompt_tokens"]),
                _num(r["completion_tokens"]),
                _num(r["latency_ms"]),
                _num(r["cost"], 6),
            )
            for r in rows
        ]
        print_table(console, ("TIME", "KEY", "MODEL", "STATUS", "IN", "OUT", "LATENCY MS", "COST"), table)
        return
    groups = [
        (
            r["group"],
            _num(r["requests"]),
            _num(r["errors"]),
            _num(r["prompt_tokens"]),
            _num(r["completion_tokens"]),
            _num(r["cost"], 4),
            _num(r["latency_p50_ms"]),
            _num(r["latency_p95_ms"]),
            _num(r["ttft_p50_ms"]),
        )
        for r in rows
    ]
    columns = (
        by.upper(),
        "REQUESTS",
        "ERRORS",
        "TOKENS IN",
        "TOKENS OUT",
        "COST",
        "P50 MS",
        "P95 MS",
        "TTFT P50 MS",
    )
    print_table(console, columns, groups)
