"""``superollama keys create | ls | show | revoke | rotate``: API keys, through the admin API.

With no server reachable (or ``--offline``) they work on the home's registry directly, so the first admin
key can be made before ``serve`` binds a public address. A running server sees such offline changes when it
reloads its keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from superollama.cli.main import Context, api, cli, json_option, pass_ctx
from superollama.cli.render import age, console, err_console, print_json, print_table
from superollama.client import APIConnectionError, SuperollamaError

if TYPE_CHECKING:
    from superollama.client import Client
    from superollama.security import KeyManager

__all__ = ["keys"]

T = TypeVar("T")
PERIODS = ("day", "week", "month", "total")
ROLES = ("user", "admin", "metrics", "viewer")  # security.keys.ROLES, kept here so that the CLI starts light
_OFFLINE_HELP = "Work on the home's registry directly, not through a server."


@cli.group()
def keys() -> None:
    """API keys: create (shown once), ls, show, revoke, rotate."""


def _pairs(values: tuple[str, ...], kind: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for value in values:
        pattern, sep, number = value.rpartition("=")
        if not sep or not pattern or not number.isdigit() or int(number) <= 0:
            raise click.BadParameter(f"{value!r}: expected PATTERN=N (N > 0)", param_hint=f"--model-{kind}")
        out[pattern] = {kind: int(number)}
    return out


def _offline(ctx: Context, run: Callable[[KeyManager], Awaitable[T]]) -> T:
    """Run ``run(manager)`` on a ``KeyManager`` over the home's registry."""
    from superollama.control import SecretBox
    from superollama.errors import SuperOllamaError
    from superollama.registry import open_registry
    from superollama.security import KeyManager

    async def go() -> T:
        seal = SecretBox.of_home(ctx.settings.home).encrypt  # for a migration that moves a secret
        registry = await open_registry(ctx.settings.registry_url, seal=seal)
        try:
            return await run(KeyManager(registry.keys, registry.events))
        finally:
            await registry.close()

    try:
        return asyncio.run(go())
    except SuperOllamaError as exc:
        raise SuperollamaError(exc.message, status=exc.status) from exc


def _call(
    ctx: Context,
    offline: bool,
    online: Callable[[Client], Mapping[str, Any]],
    run: Callable[[KeyManager], Awaitable[dict[str, Any]]],
) -> Mapping[str, Any]:
    """The admin API's answer, or the same through the registry when no server is reachable."""
    if not offline:
        try:
            return online(ctx.client)
        except APIConnectionError:
            err_console.print(f"[dim]no server at {ctx.client.base_url}: using {ctx.settings.home}[/dim]")
    return _offline(ctx, run)


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default="user",
    show_default=True,
    help="user: the client APIs; admin: everything; metrics: only GET /metrics (for Prometheus); "
    "viewer: reads the admin API and the web UI, changes nothing.",
)
@click.option("--models", help="Models it may call: names or patterns, comma-separated (default: all).")
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute (all its models together).")
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens per minute (all its models together).")
@click.option("--model-rpm", multiple=True, metavar="PATTERN=N", help="Requests per minute on some models.")
@click.option("--model-tpm", multiple=True, metavar="PATTERN=N", help="Tokens per minute on some models.")
@click.option("--budget", type=click.FloatRange(min=0), help="Budget in USD per period.")
@click.option("--period", type=click.Choice(PERIODS), default="month", show_default=True)
@click.option("--expires", help="Lifetime: 30d, 12h, 2w… (default: never).")
@click.option("--offline", is_flag=True, help=_OFFLINE_HELP)
@json_option
@pass_ctx
@api
def create(ctx: Context, /, **opts: Any) -> None:
    """Create a key; it is printed once and cannot be shown again."""
    limits = _pairs(opts["model_rpm"], "rpm")
    for pattern, value in _pairs(opts["model_tpm"], "tpm").items():
        limits.setdefault(pattern, {}).update(value)
    body: dict[str, Any] = {
        "name": opts["name"],
        "role": opts["role"],
        "models": [m.strip() for m in (opts["models"] or "").split(",") if m.strip()],
        "rpm": opts["rpm"],
        "tpm": opts["tpm"],
        "model_limits": limits,
        "budget_usd": opts["budget"],
        "budget_period": opts["period"],
        "expires_in": opts["expires"],
    }

    async def run(manager: KeyManager) -> dict[str, Any]:
        from superollama.admin.keys import issued_json, spec_from_json

        return issued_json(await manager.create(spec_from_json(body), actor="cli"))

    issued = _call(ctx, opts["offline"], lambda c: c.keys.create(**body), run)
    if opts["as_json"]:
        print_json(issued)
        return
    err_console.print(
        f"created {issued['role']} key '{issued['name']}' ({issued['id']}, {issued['prefix']}); "
        "store it now, it cannot be shown again:",
        soft_wrap=True,
    )
    click.echo(issued["key"])


def _limits(k: Mapping[str, Any]) -> str:
    parts = [f"{v} {n}" for n, v in (("rpm", k["rpm"]), ("tpm", k["tpm"])) if v]
    parts += [
        f"{p}: " + ", ".join(f"{v} {n}" for n, v in lim.items()) for p, lim in k["model_limits"].items()
    ]
    return "; ".join(parts) or "-"


def _budget(k: Mapping[str, Any]) -> str:
    if k["budget_usd"] is None:
        return "-"
    return f"${k['budget_usd']:g}/{k['budget_period']}"


@keys.command("ls")
@click.option("--offline", is_flag=True, help=_OFFLINE_HELP)
@json_option
@pass_ctx
@api
def list_keys(ctx: Context, offline: bool, as_json: bool) -> None:
    """List keys (never their secrets)."""

    async def run(manager: KeyManager) -> dict[str, Any]:
        from superollama.admin.keys import key_json

        now = datetime.now(UTC)
        return {"keys": [key_json(r, now) for r in await manager.list()]}

    items = _call(ctx, offline, lambda c: {"keys": c.keys.list()}, run)["keys"]
    if as_json:
        print_json(items)
        return
    rows = [
        (
            k["id"],
            k["prefix"],
            k["name"],
            k["role"],
            k["state"],
            ",".join(k["models"]) or "*",
            age(k["last_used_at"]),
        )
        for k in items
    ]
    print_table(console, ("ID", "PREFIX", "NAME", "ROLE", "STATE", "MODELS", "LAST USED"), rows)


@keys.command("show")
@click.argument("ident", metavar="ID_OR_PREFIX")
@click.option("--offline", is_flag=True, help=_OFFLINE_HELP)
@json_option
@pass_ctx
@api
def show_key(ctx: Context, ident: str, offline: bool, as_json: bool) -> None:
    """Show one key: its permissions, limits, budget and state."""

    async def run(manager: KeyManager) -> dict[str, Any]:
        from superollama.admin.keys import key_json

        return key_json(await manager.get(ident), datetime.now(UTC))

    k = _call(ctx, offline, lambda c: c.keys.get(ident), run)
    if as_json:
        print_json(k)
        return
    fields = [
        ("id", k["id"]),
        ("name", k["name"]),
        ("prefix", k["prefix"]),
        ("role", k["role"]),
        ("state", k["state"]),
        ("models", ", ".join(k["models"]) or "all"),
        ("limits", _limits(k)),
        ("budget", _budget(k)),
        ("spend", f"${k['spend_usd']:.4f}" if k.get("spend_usd") is not None else "-"),
        ("expires", k["expires_at"] or "never"),
        ("revoked", k["revoked_at"] or "-"),
        ("created", k["created_at"]),
        ("last used", k["last_used_at"] or "never"),
    ]
    print_table(console, ("", ""), fields)


@keys.command("revoke")
@click.argument("ident", metavar="ID_OR_PREFIX")
@click.option("--offline", is_flag=True, help=_OFFLINE_HELP)
@json_option
@pass_ctx
@api
def revoke_key(ctx: Context, ident: str, offline: bool, as_json: bool) -> None:
    """Revoke a key: it stops working at once (401)."""

    async def run(manager: KeyManager) -> dict[str, Any]:
        from superollama.admin.keys import key_json

        return key_json(await manager.revoke(ident, actor="cli"), datetime.now(UTC))

    k = _call(ctx, offline, lambda c: c.keys.revoke(ident), run)
    if as_json:
        print_json(k)
        return
    console.print(f"revoked '{k['name']}' ({k['id']}, {k['prefix']})")


@keys.command("rotate")
@click.argument("ident", metavar="ID_OR_PREFIX")
@click.option("--offline", is_flag=True, help=_OFFLINE_HELP)
@json_option
@pass_ctx
@api
def rotate_key(ctx: Context, ident: str, offline: bool, as_json: bool) -> None:
    """Give a key a new secret (same id, permissions and limits); the old one stops working."""

    async def run(manager: KeyManager) -> dict[str, Any]:
        from superollama.admin.keys import issued_json

        return issued_json(await manager.rotate(ident, actor="cli"))

    issued = _call(ctx, offline, lambda c: c.keys.rotate(ident), run)
    if as_json:
        print_json(issued)
        return
    err_console.print(
        f"rotated '{issued['name']}' ({issued['id']}): new prefix {issued['prefix']}; "
        "store the new key now, it cannot be shown again:",
        soft_wrap=True,
    )
    click.echo(issued["key"])
