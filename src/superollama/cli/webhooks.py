"""``superollama webhooks add | ls | show | enable | disable | rotate | rm | deliveries | ping``: signed
deliveries of events to URLs, through the admin API."""

from __future__ import annotations

import click

from superollama.cli.main import Context, api, cli, json_option, pass_ctx
from superollama.cli.render import age, console, print_json, print_table

__all__ = ["webhooks"]


@cli.group()
def webhooks() -> None:
    """Webhooks: events POSTed to URLs, signed (X-Superollama-Signature), retried, with a delivery log."""


@webhooks.command("add")
@click.argument("url")
@click.option(
    "--events",
    "events",
    multiple=True,
    help="Event type or pattern to deliver (repeatable), e.g. 'deployment.*', 'model.pull'; default: all.",
)
@click.option("--description", default="", help="A note shown in listings.")
@json_option
@pass_ctx
@api
def add(ctx: Context, url: str, events: tuple[str, ...], description: str, as_json: bool) -> None:
    """Deliver events to URL; prints the signing secret (shown once)."""
    hook = ctx.client.webhooks.create(url, events=events or None, description=description)
    if as_json:
        print_json(hook)
        return
    console.print(f"webhook {hook['id']} → {hook['url']} ({', '.join(hook['events'])})")
    console.print(f"signing secret (shown once): {hook.get('secret')}")


@webhooks.command("ls")
@json_option
@pass_ctx
@api
def ls(ctx: Context, as_json: bool) -> None:
    """List webhooks."""
    found = ctx.client.webhooks.list()
    if as_json:
        print_json(found)
        return
    rows = [
        (h["id"], h["url"], ",".join(h["events"]), "yes" if h["enabled"] else "no", age(h["created_at"]))
        for h in found
    ]
    print_table(console, ("ID", "URL", "EVENTS", "ENABLED", "CREATED"), rows)


@webhooks.command("show")
@click.argument("hook_id")
@json_option
@pass_ctx
@api
def show(ctx: Context, hook_id: str, as_json: bool) -> None:
    """Show a webhook (never its secret), as JSON (with or without --json)."""
    print_json(ctx.client.webhooks.get(hook_id))


@webhooks.command("enable")
@click.argument("hook_id")
@json_option
@pass_ctx
@api
def enable(ctx: Context, hook_id: str, as_json: bool) -> None:
    """Deliver to this webhook again."""
    hook = ctx.client.webhooks.update(hook_id, enabled=True)
    if as_json:
        print_json(hook)
        return
    console.print(f"enabled {hook_id}")


@webhooks.command("disable")
@click.argument("hook_id")
@json_option
@pass_ctx
@api
def disable(ctx: Context, hook_id: str, as_json: bool) -> None:
    """Stop delivering to this webhook (its pending deliveries fail)."""
    hook = ctx.client.webhooks.update(hook_id, enabled=False)
    if as_json:
        print_json(hook)
        return
    console.print(f"disabled {hook_id}")


@webhooks.command("rotate")
@click.argument("hook_id")
@json_option
@pass_ctx
@api
def rotate(ctx: Context, hook_id: str, as_json: bool) -> None:
    """Give the webhook a new signing secret (shown once)."""
    hook = ctx.client.webhooks.update(hook_id, rotate_secret=True)
    if as_json:
        print_json(hook)
        return
    console.print(f"new signing secret for {hook_id} (shown once): {hook.get('secret')}")


@webhooks.command("rm")
@click.argument("hook_id")
@json_option
@pass_ctx
@api
def rm(ctx: Context, hook_id: str, as_json: bool) -> None:
    """Remove a webhook and its delivery log."""
    deleted = ctx.client.webhooks.delete(hook_id)
    if as_json:
        print_json(deleted)
        return
    console.print(f"removed {hook_id}")


@webhooks.command("deliveries")
@click.argument("hook_id")
@click.option("--state", type=click.Choice(["pending", "delivered", "failed"]), help="Only these.")
@click.option("--limit", default=20, show_default=True, help="How many, newest first.")
@json_option
@pass_ctx
@api
def deliveries(ctx: Context, hook_id: str, state: str | None, limit: int, as_json: bool) -> None:
    """The webhook's delivery log, newest first."""
    found = ctx.client.webhooks.deliveries(hook_id, state=state or None, limit=limit)
    if as_json:
        print_json(found)
        return
    rows = [
        (
            d["id"],
            d["type"],
            d["state"],
            d["attempts"],
            d["status_code"] or "-",
            d["error"] or "",
            age(d["updated_at"]),
        )
        for d in found
    ]
    print_table(console, ("ID", "TYPE", "STATE", "ATTEMPTS", "STATUS", "ERROR", "WHEN"), rows)


@webhooks.command("ping")
@click.argument("hook_id")
@json_option
@pass_ctx
@api
def ping(ctx: Context, hook_id: str, as_json: bool) -> None:
    """Send a webhook.ping now and show how the receiver answered."""
    d = ctx.client.webhooks.ping(hook_id)
    if as_json:
        print_json(d)
        return
    outcome = f"HTTP {d['status_code']}" if d["status_code"] else (d["error"] or "no answer")
    console.print(f"{d['state']}: {outcome} in {d['duration_ms']} ms")
