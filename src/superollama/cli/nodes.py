"""``superollama nodes ls|show|cordon|uncordon|drain|label|rm|token``: the machines models run on (the
admin API's ``/admin/v1/nodes``). With ``serve --cluster`` these are the Ray cluster's nodes."""

from __future__ import annotations

from typing import Any

import click

from superollama.cli.main import Context, api, cli, pass_ctx
from superollama.cli.render import age, console, err_console, human_size, print_json, print_table
from superollama.client.types import Node

__all__ = ["nodes"]


def _free(node: Node) -> str:
    usage = node.get("usage") or node["inventory"].get("usage") or {}
    free, total = usage.get("memory_available"), usage.get("memory_total")
    return f"{human_size(free)} / {human_size(total)}" if total else ""


def _gpus(node: Node) -> str:
    usage = node.get("usage") or node["inventory"].get("usage") or {}
    gpus = usage.get("gpus") or []
    if gpus:
        return ", ".join(
            f"{g['device']} {human_size(g['memory_total'] - g['memory_used'])} free" for g in gpus
        )
    ray_gpus = node["inventory"].get("ray_gpus")
    return f"{ray_gpus:g} (Ray's count, no memory known)" if ray_gpus else ""


@cli.group()
def nodes() -> None:
    """The machines models run on: list, show, cordon, uncordon, drain, remove."""


@nodes.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
@api
def ls(ctx: Context, as_json: bool) -> None:
    """Every node: state, address, free RAM, GPUs, instances."""
    listed = ctx.client.nodes.list()
    if as_json:
        print_json(listed)
        return
    rows = [
        (
            n["name"],
            n["state"],
            n["address"],
            _free(n),
            _gpus(n),
            str(len(n["instances"])),
            age(n["last_seen"]) if n["last_seen"] else "",
        )
        for n in listed
    ]
    print_table(console, ("NODE", "STATE", "ADDRESS", "RAM FREE", "GPUS", "INSTANCES", "SEEN"), rows)


@nodes.command()
@click.argument("name")
@pass_ctx
@api
def show(ctx: Context, name: str) -> None:
    """One node as JSON: inventory, use, instances."""
    print_json(ctx.client.nodes.get(name))


def _state_command(action: str, doc: str) -> None:
    @nodes.command(action, help=doc)
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @pass_ctx
    @api
    def command(ctx: Context, name: str, as_json: bool) -> None:
        data: dict[str, Any] = dict(getattr(ctx.client.nodes, action)(name))
        if as_json:
            print_json(data)
            return
        node = data.get("node", data)
        extra = f"; stopped {', '.join(data['stopped']) or 'nothing'}" if "stopped" in data else ""
        console.print(f"node {node['name']}: {node['state']}{extra}")


_state_command("cordon", "Place nothing new on NAME (its instances keep serving).")
_state_command("uncordon", "Let placement use NAME again.")
_state_command("drain", "Cordon NAME and stop its instances; they are placed elsewhere on demand.")


@nodes.command("label")
@click.argument("name")
@click.argument("changes", nargs=-1, required=True, metavar="KEY=VALUE|KEY- ...")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
@api
def label(ctx: Context, name: str, changes: tuple[str, ...], as_json: bool) -> None:
    """Set (zone=b) or remove (zone-) labels of node NAME; deployments' --labels are matched against
    them. Any node, local included."""
    to_set: dict[str, str] = {}
    remove: list[str] = []
    for change in changes:
        key, eq, value = change.partition("=")
        if eq and key:
            to_set[key] = value
        elif change.endswith("-") and len(change) > 1:
            remove.append(change[:-1])
        else:
            raise click.BadParameter(
                f"{change!r}: write KEY=VALUE to set, KEY- to remove", param_hint="labels"
            )
    node = ctx.client.nodes.label(name, to_set, remove=remove)
    if as_json:
        print_json(node)
        return
    labels = node["inventory"].get("labels") or {}
    shown = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"
    console.print(f"node {node['name']}: labels {shown}", highlight=False)


@nodes.command("rm")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
@api
def rm(ctx: Context, name: str, as_json: bool) -> None:
    """Forget NAME (refused while instances run there: drain it first)."""
    removed = ctx.client.nodes.remove(name)
    if as_json:
        print_json(removed)
        return
    console.print(f"removed node {name}")


@nodes.group()
def token() -> None:
    """Join tokens for `superollama agent --join`: create (shown once), ls, revoke."""


@token.command("create")
@click.option("--name", help="A name to list and revoke it by (default: its id).")
@click.option("--expires", help="Valid for this long: 24h, 7d, 90m (default: until revoked).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
@api
def token_create(ctx: Context, name: str | None, expires: str | None, as_json: bool) -> None:
    """Make a join token; it is printed this once (the server keeps only its hash)."""
    made = ctx.client.nodes.create_token(name=name, expires_in=expires)
    if as_json:
        print_json(made)
        return
    until = f", expires {made['expires_at']}" if made.get("expires_at") else ""
    click.echo(made["token"])
    err_console.print(
        f"join token {made['name']} ({made['id']}){until}: shown once. On another machine:\n"
        f"  superollama agent --join {ctx.client.base_url} --token TOKEN --name NODE",
        highlight=False,
        soft_wrap=True,
    )


@token.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
@api
def token_ls(ctx: Context, as_json: bool) -> None:
    """The join tokens: id, name, state, expiry, last join."""
    listed = ctx.client.nodes.tokens()
    if as_json:
        print_json(listed)
        return
    rows = [
        (
            t["id"],
            t["name"],
            t["prefix"],
            t["state"],
            t.get("expires_at") or "",
            f"{t['last_node']} {age(t['last_used_at'])}" if t.get("last_used_at") else "",
        )
        for t in listed
    ]
    print_table(console, ("ID", "NAME", "PREFIX", "STATE", "EXPIRES", "LAST JOIN"), rows)


@token.command("revoke")
@click.argument("ident", metavar="ID_OR_NAME")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
@api
def token_revoke(ctx: Context, ident: str, as_json: bool) -> None:
    """Revoke a join token: no machine joins with it, and an agent using it does not rejoin."""
    revoked = ctx.client.nodes.revoke_token(ident)
    if as_json:
        print_json(revoked)
        return
    console.print(f"revoked join token {revoked['name']} ({revoked['id']})")
