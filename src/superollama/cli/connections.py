"""``superollama connect | connections | disconnect``: external backends we do not run."""

from __future__ import annotations

import click
import orjson

from superollama.cli.main import Context, api, cli, console, pass_ctx
from superollama.cli.render import print_table

__all__ = ["connect", "connections", "disconnect"]


@cli.command()
@click.argument("kind", type=click.Choice(["openai", "ollama", "tgi"]))
@click.argument("url")
@click.option("--name", help="Name its models are routed under (NAME/MODEL); default: the kind.")
@click.option("--api-key", help="Upstream key: a literal (stored encrypted) or env:VAR (read when used).")
@pass_ctx
@api
def connect(ctx: Context, kind: str, url: str, name: str | None, api_key: str | None) -> None:
    """Register an external server; its models become routable as NAME/MODEL."""
    body = {"kind": kind, "url": url, "name": name, "api_key": api_key}
    state = ctx.client.request("POST", "/admin/v1/connections", json=body)
    status = "healthy" if state["healthy"] else f"unavailable ({state['error']})"
    console.print(f"connected '{state['name']}' ({kind} at {state['url']}): {status}")
    for model in state["models"]:
        console.print(f"  {state['name']}/{model}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--refresh", "refresh", help="Check this connection now (health and models).")
@pass_ctx
@api
def connections(ctx: Context, as_json: bool, refresh: str | None) -> None:
    """List connections with their health and discovered models."""
    if refresh:
        ctx.client.request("POST", f"/admin/v1/connections/{refresh}/refresh")
    items = ctx.client.request("GET", "/admin/v1/connections")["connections"]
    if as_json:
        click.echo(orjson.dumps(items, option=orjson.OPT_INDENT_2).decode())
        return
    rows = [
        (
            c["name"],
            c["kind"],
            c["url"],
            ("healthy" if c["healthy"] else "down") if c["enabled"] else "disabled",
            len(c["models"]),
            c["error"] or "",
        )
        for c in items
    ]
    print_table(console, ("NAME", "KIND", "URL", "STATE", "MODELS", "ERROR"), rows)


@cli.command()
@click.argument("name")
@pass_ctx
@api
def disconnect(ctx: Context, name: str) -> None:
    """Remove a connection; its models stop being routable."""
    ctx.client.request("DELETE", f"/admin/v1/connections/{name}")
    console.print(f"disconnected '{name}'")
