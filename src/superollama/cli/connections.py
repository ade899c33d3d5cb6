"""``superollama connect | connections [ls | show] | disconnect``: external backends we do not run; and
``superollama connections pull | copy | delete``: the models on a connected (Ollama) server, via its API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from superollama.cli.main import Context, api, cli, json_option, pass_ctx
from superollama.cli.render import console, last_event, print_json, print_table, show_progress
from superollama.client import SuperollamaError
from superollama.client.types import Connection

__all__ = ["connect", "connections", "disconnect"]


@cli.command()
@click.argument("kind")  # openai, ollama, tgi or a plugin's kind: the server says which it knows
@click.argument("url")
@click.option("--name", help="Name its models are routed under (NAME/MODEL); default: the kind.")
@click.option("--api-key", help="Upstream key: a literal (stored encrypted) or env:VAR (read when used).")
@click.option(
    "--no-stream-usage",
    is_flag=True,
    help="Do not ask its server for stream usage (a server that rejects stream_options): estimate it.",
)
@json_option
@pass_ctx
@api
def connect(
    ctx: Context,
    kind: str,
    url: str,
    *,
    name: str | None,
    api_key: str | None,
    no_stream_usage: bool,
    as_json: bool,
) -> None:
    """Register an external server of KIND (openai, ollama, tgi, or a plugin's); its models become
    routable as NAME/MODEL."""
    options = {"stream_usage": False} if no_stream_usage else None
    state = ctx.client.connections.add(kind, url, name=name, api_key=api_key, options=options)
    if as_json:
        print_json(state)
        return
    status = "healthy" if state["healthy"] else f"unavailable ({state['error']})"
    console.print(f"connected '{state['name']}' ({kind} at {state['url']}): {status}")
    for model in state["models"]:
        console.print(f"  {state['name']}/{model}")


@cli.group(invoke_without_command=True)
@json_option
@click.option("--refresh", "refresh", help="Check this connection now (health and models).")
@pass_ctx
@api
def connections(ctx: Context, as_json: bool, refresh: str | None) -> None:
    """List connections with their health and discovered models (or manage a server's models: see the
    commands below)."""
    if click.get_current_context().invoked_subcommand is not None:
        return
    _list(ctx, as_json, refresh)


@connections.command("ls")
@json_option
@click.option("--refresh", "refresh", help="Check this connection now (health and models).")
@pass_ctx
@api
def list_connections(ctx: Context, as_json: bool, refresh: str | None) -> None:
    """List connections with their health and discovered models."""
    _list(ctx, as_json, refresh)


@connections.command("show")
@click.argument("name")
@json_option
@pass_ctx
@api
def show_connection(ctx: Context, name: str, as_json: bool) -> None:
    """Show one connection: its server, options, health and models."""
    c = ctx.client.connections.get(name)
    if as_json:
        print_json(c)
        return
    fields = [
        ("name", c["name"]),
        ("kind", c["kind"]),
        ("url", c["url"]),
        ("state", _state(c)),
        ("error", c["error"] or "-"),
        ("api key", c["api_key"] or "-"),
        ("stream usage", _usage(c)),
        ("models", ", ".join(f"{c['name']}/{m}" for m in c["models"]) or "-"),
        ("created", c["created_at"] or "-"),
    ]
    print_table(console, ("", ""), fields)


def _list(ctx: Context, as_json: bool, refresh: str | None) -> None:
    if refresh:
        ctx.client.connections.refresh(refresh)
    items = ctx.client.connections.list()
    if as_json:
        print_json(items)
        return
    rows = [
        (c["name"], c["kind"], c["url"], _state(c), len(c["models"]), _usage(c), c["error"] or "")
        for c in items
    ]
    print_table(console, ("NAME", "KIND", "URL", "STATE", "MODELS", "STREAM USAGE", "ERROR"), rows)


def _state(c: Connection) -> str:
    return ("healthy" if c["healthy"] else "down") if c["enabled"] else "disabled"


def _usage(c: Mapping[str, Any]) -> str:
    """How its streams are metered: asked of the server, or estimated (``--no-stream-usage``)."""
    return "asked" if c.get("stream_usage", True) else "estimated"


@cli.command()
@click.argument("name")
@json_option
@pass_ctx
@api
def disconnect(ctx: Context, name: str, as_json: bool) -> None:
    """Remove a connection; its models stop being routable."""
    deleted = ctx.client.connections.delete(name)
    if as_json:
        print_json(deleted)
        return
    console.print(f"disconnected '{name}'")


@connections.command("pull")
@click.argument("name")
@click.argument("model")
@json_option
@pass_ctx
@api
def pull_model(ctx: Context, name: str, model: str, as_json: bool) -> None:
    """Pull MODEL onto connection NAME's server (an Ollama server pulls it from its library)."""
    events = ctx.client.connections.pull(name, model)
    final = last_event(events) if as_json else show_progress(console, events)
    if final.get("status") != "success":
        error = final.get("error")
        raise SuperollamaError(str(error.get("message", error) if isinstance(error, dict) else final))
    if as_json:
        print_json(final)
        return
    console.print(f"pulled {final['model']}")


@connections.command("copy")
@click.argument("name")
@click.argument("source")
@click.argument("destination")
@json_option
@pass_ctx
@api
def copy_model(ctx: Context, name: str, source: str, destination: str, as_json: bool) -> None:
    """Copy SOURCE to DESTINATION on connection NAME's server."""
    state = ctx.client.connections.copy(name, source, destination)
    if as_json:
        print_json(state)
        return
    console.print(f"copied {name}/{_local(name, source)} to {name}/{_local(name, destination)}")


@connections.command("delete")
@click.argument("name")
@click.argument("model")
@json_option
@pass_ctx
@api
def delete_model(ctx: Context, name: str, model: str, as_json: bool) -> None:
    """Delete MODEL from connection NAME's server."""
    state = ctx.client.connections.delete_model(name, model)
    if as_json:
        print_json(state)
        return
    console.print(f"deleted {name}/{_local(name, model)}")


def _local(name: str, model: str) -> str:
    return model.removeprefix(f"{name}/")
