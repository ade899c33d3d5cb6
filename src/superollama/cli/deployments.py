"""``superollama deploy | split | promote | rollback | pause | resume | deployments [ls | show | rm]``:
deployments, the names clients send in ``model``. Clients of ``/admin/v1/deployments``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from superollama.cli.main import Context, api, cli, json_option, pass_ctx
from superollama.cli.render import console, print_json, print_table
from superollama.client.types import Placement

__all__ = ["deploy", "deployments", "pause", "promote", "resume", "rollback", "scale", "split"]

_STICKY = click.Choice(["none", "user", "header", "key"])
_JSON = json_option
F = TypeVar("F", bound=Callable[..., Any])


def _placement_options(func: F) -> F:
    """``--device --node --labels --spread``: where the instances may run (checked by the server)."""
    for option in reversed(
        (
            click.option("--device", help="cpu, gpu or any (default any: GPUs first, else the CPU)."),
            click.option("--node", help="Pin the instances to this node."),
            click.option("--labels", help="Only nodes with all these labels: zone=b,gpu=a100."),
            click.option(
                "--spread",
                is_flag=True,
                help="Its replicas on different nodes, whatever the server's policy.",
            ),
        )
    ):
        func = option(func)
    return func


def _placement(device: str | None, node: str | None, labels: str | None, spread: bool) -> Placement | None:
    """The options as the API's ``placement`` (None when none is given: the target keeps its own)."""
    if device is None and node is None and labels is None and not spread:
        return None
    return {"device": device, "node": node, "labels": labels, "spread": spread}


def _print(details: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(details)
        return
    state = "enabled" if details["enabled"] else "paused"
    console.print(f"{details['model']}: {state}, sticky {details['sticky']}", highlight=False)
    rows = []
    for t in details.get("live") or [{**t, "share": "", "instances": []} for t in details["targets"]]:
        instances = ", ".join(_instance(i) for i in t["instances"]) or "-"
        share = f"{t['share']}%" if t["share"] != "" else ""
        if t.get("role") == "shadow":  # a copy of that share of the requests, never an answer
            share = f"shadow {t['weight']}%"
        rows.append(
            (t["name"], t["weight"], share, t.get("replicas", 1), _where(t.get("placement")), instances)
        )
    print_table(console, ("TARGET", "WEIGHT", "SHARE", "REPLICAS", "PLACEMENT", "INSTANCES"), rows)
    swap = details.get("swap")
    if swap:
        console.print(
            f"swap: {swap['mode']} ({swap['reason']}); switched in {swap['switch_seconds']} s",
            highlight=False,
        )
    for h in details.get("history") or []:
        targets = " ".join(f"{t['name']}={t['weight']}" for t in h["targets"])
        console.print(f"  before {h['replaced_at']}: {targets}", highlight=False)
    from superollama.cli.rollouts import print_rollout, print_shadow

    if details.get("rollout"):
        print_rollout({**details["rollout"], "live": details.get("metrics")})
    if details.get("shadow"):
        print_shadow(details["shadow"])


def _instance(i: Mapping[str, Any]) -> str:
    state = "" if i.get("state", "ready") == "ready" else f", {i['state']}"
    node = f" on {i['node']}" if i.get("node") else ""
    return f"{i['id']}{node} ({i.get('in_flight', 0)} in flight{state})"


def _where(placement: Mapping[str, Any] | None) -> str:
    """``device=gpu node=beta labels=zone=b spread``, or ``-`` for anywhere."""
    if not placement:
        return "-"
    parts = []
    if placement.get("device") not in (None, "any"):
        parts.append(f"device={placement['device']}")
    if placement.get("node"):
        parts.append(f"node={placement['node']}")
    if placement.get("labels"):
        parts.append("labels=" + ",".join(f"{k}={v}" for k, v in sorted(placement["labels"].items())))
    if placement.get("spread"):
        parts.append("spread")
    return " ".join(parts) or "-"


def _with_replicas(targets: tuple[str, ...], replicas: int | None) -> list[str]:
    """``--replicas N`` for the targets that do not say theirs (``VERSION=WEIGHTxN``)."""
    if replicas is None:
        return list(targets)
    out = []
    for spec in targets:
        name, eq, weight = spec.rpartition("=")
        if not eq:
            name, weight = spec, "100"
        out.append(spec if "x" in weight else f"{name}={weight}x{replicas}")
    return out


@cli.command()
@click.argument("name")
@click.option(
    "--target", "targets", multiple=True, required=True, help="VERSION=WEIGHT[xREPLICAS] (repeatable)."
)
@click.option("--replicas", type=click.IntRange(min=1), help="Instances per target (default 1).")
@click.option("--stage", help="The stage to deploy to (default production; clients ask NAME@STAGE).")
@click.option("--sticky", type=_STICKY, help="Keep a user, session header or key on one target.")
@_placement_options
@_JSON
@pass_ctx
@api
def deploy(
    ctx: Context,
    name: str,
    targets: tuple[str, ...],
    *,
    replicas: int | None,
    stage: str | None,
    sticky: str | None,
    device: str | None,
    node: str | None,
    labels: str | None,
    spread: bool,
    as_json: bool,
) -> None:
    """Create a deployment, or give it new targets (each new one starts and warms up before it takes
    traffic; the old ones drain). ``--replicas N`` or ``VERSION=WEIGHTxN``: N instances of a target,
    started in parallel, requests spread over them. ``--device``, ``--node``, ``--labels``, ``--spread``:
    where the targets' instances may run, at every start of one."""
    specs = _with_replicas(targets, replicas)
    where = _placement(device, node, labels, spread)
    _print(ctx.client.deployments.put(name, specs, stage=stage, sticky=sticky, placement=where), as_json)


@cli.command()
@click.argument("name")
@click.argument("rest", nargs=-1, metavar="[TARGET [REPLICAS]]")
@click.option("--replicas", "count", type=click.IntRange(min=1), help="How many instances.")
@_placement_options
@_JSON
@pass_ctx
@api
def scale(
    ctx: Context,
    name: str,
    rest: tuple[str, ...],
    *,
    count: int | None,
    device: str | None,
    node: str | None,
    labels: str | None,
    spread: bool,
    as_json: bool,
) -> None:
    """Run N instances: ``scale VERSION --replicas N`` of a version clients name directly, or ``scale
    NAME TARGET N`` of one target of deployment NAME (new ones join when ready; a surplus drains, no
    request cut). ``--device``, ``--node``, ``--labels``, ``--spread``: where they may run (kept)."""
    where = _placement(device, node, labels, spread)
    if len(rest) > 2:
        raise click.UsageError("scale VERSION --replicas N, or scale NAME TARGET N")
    if len(rest) == 2:
        try:
            count = int(rest[1])
        except ValueError:
            raise click.BadParameter(f"{rest[1]!r} is not a number", param_hint="REPLICAS") from None
    if count is None or count < 1:
        raise click.UsageError("how many: --replicas N (1 or more)")
    if rest:
        _print(ctx.client.deployments.scale(name, rest[0], count, placement=where), as_json)
        return
    scaled = ctx.client.models.scale(name, count, placement=where)
    if as_json:
        print_json(scaled)
        return
    nodes = ", ".join(f"{i['id']} on {i['node']} ({i['state']})" for i in scaled["instances"]) or "-"
    console.print(
        f"{scaled['version']}: {scaled['replicas']} replica(s), placement {_where(scaled.get('placement'))}; "
        f"instances: {nodes}",
        highlight=False,
    )


@cli.command()
@click.argument("name")
@click.argument("targets", nargs=-1, required=True)
@click.option("--sticky", type=_STICKY, help="Keep a user, session header or key on one target.")
@_JSON
@pass_ctx
@api
def split(ctx: Context, name: str, targets: tuple[str, ...], sticky: str | None, as_json: bool) -> None:
    """Weighted A/B: new weights for a deployment's targets (VERSION=WEIGHT ...)."""
    _print(ctx.client.deployments.split(name, targets, sticky=sticky), as_json)


@cli.command()
@click.argument("name")
@_JSON
@pass_ctx
@api
def promote(ctx: Context, name: str, as_json: bool) -> None:
    """Give production the target set of a stage: promote NAME@STAGE."""
    _print(ctx.client.deployments.promote(name), as_json)


@cli.command()
@click.argument("name")
@_JSON
@pass_ctx
@api
def rollback(ctx: Context, name: str, as_json: bool) -> None:
    """Back to the target set a deployment had before its last change."""
    _print(ctx.client.deployments.rollback(name), as_json)


@cli.command()
@click.argument("name")
@_JSON
@pass_ctx
@api
def pause(ctx: Context, name: str, as_json: bool) -> None:
    """Pause a deployment: it answers as disabled until resumed; nothing shifts."""
    details = ctx.client.deployments.pause(name)
    if as_json:
        print_json(details)
        return
    console.print(f"paused {name}", highlight=False)


@cli.command()
@click.argument("name")
@_JSON
@pass_ctx
@api
def resume(ctx: Context, name: str, as_json: bool) -> None:
    """Resume a paused deployment."""
    details = ctx.client.deployments.resume(name)
    if as_json:
        print_json(details)
        return
    console.print(f"resumed {name}", highlight=False)


@cli.group(invoke_without_command=True)
@_JSON
@pass_ctx
@api
def deployments(ctx: Context, as_json: bool) -> None:
    """List deployments (or see the commands below)."""
    if click.get_current_context().invoked_subcommand is None:
        _list(ctx, as_json)


@deployments.command("ls")
@_JSON
@pass_ctx
@api
def list_deployments(ctx: Context, as_json: bool) -> None:
    """List deployments with their targets and weights."""
    _list(ctx, as_json)


@deployments.command("show")
@click.argument("name")
@_JSON
@pass_ctx
@api
def show_deployment(ctx: Context, name: str, as_json: bool) -> None:
    """One deployment: targets, shares, instances, history."""
    _print(ctx.client.deployments.get(name), as_json)


@deployments.command("rm")
@click.argument("name")
@_JSON
@pass_ctx
@api
def remove_deployment(ctx: Context, name: str, as_json: bool) -> None:
    """Remove a deployment stage (its versions stay)."""
    deleted = ctx.client.deployments.delete(name)
    if as_json:
        print_json(deleted)
        return
    console.print(f"deleted {name}", highlight=False)


def _list(ctx: Context, as_json: bool) -> None:
    items = ctx.client.deployments.list()
    if as_json:
        print_json({"deployments": items})  # as it always printed: the API's answer, whole
        return
    rows = [
        (
            d.get("model", d["name"]),
            " ".join(f"{t['name']}={t['weight']}" for t in d["targets"]),
            d.get("sticky"),
            "enabled" if d["enabled"] else "paused",
        )
        for d in items
    ]
    print_table(console, ("NAME", "TARGETS", "STICKY", "STATE"), rows)
