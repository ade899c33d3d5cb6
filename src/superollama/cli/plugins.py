"""``superollama plugins``: the plugins this install loads (what ``serve`` loads from it), each with its
version and hooks, or the error that left it out; ``--server``: those of the running server
(``GET /admin/v1/plugins``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from superollama.cli.main import Context, api, cli, json_option, pass_ctx
from superollama.cli.render import console, print_json, print_table

__all__ = ["plugins"]


@cli.command()
@json_option
@click.option("--server", is_flag=True, help="The running server's plugins (admin API), not this install's.")
@pass_ctx
@api
def plugins(ctx: Context, *, as_json: bool, server: bool) -> None:
    """Installed plugins: name, version, hooks; a plugin that failed to load, with its error."""
    rows: Sequence[Mapping[str, Any]]
    if server:
        rows = ctx.client.plugins.list()
    else:
        rows = [p.to_json() for p in ctx.plugins.report()]
    if as_json:
        print_json(rows)
        return
    table = [
        (
            r["name"],
            r["version"] or "-",
            ", ".join(r["hooks"]) or "-",
            f"error: {r['error']}" if r["error"] else "ok",
        )
        for r in rows
    ]
    print_table(console, ("NAME", "VERSION", "HOOKS", "STATUS"), table)


def _status(error: str | None) -> str:
    return f"error: {error}" if error else "ok"
