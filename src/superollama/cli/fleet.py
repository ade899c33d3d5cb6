"""``superollama apply -f fleet.yaml [--dry-run] [--prune]`` and ``superollama export``: the fleet as a
file (models to pull, connections, deployments, keys; never a secret). Clients of ``/admin/v1/apply`` and
``/admin/v1/export``; YAML is read and written here, the API speaks JSON."""

from __future__ import annotations

import sys
from typing import Any

import click

from superollama.cli.main import Context, api, cli, json_option, pass_ctx
from superollama.cli.render import console, print_json

__all__ = ["apply", "export"]

_MARK = {"create": "+", "update": "~", "delete": "-", "differs": "!"}


@cli.command()
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.File("r"),
    help="The fleet file (YAML or JSON; - reads stdin).",
)
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--prune", is_flag=True, help="Also remove what the file no longer names.")
@json_option
@pass_ctx
@api
def apply(ctx: Context, path: Any, *, dry_run: bool, prune: bool, as_json: bool) -> None:
    """Make the server match a fleet file: only the differences change (a second run changes nothing)."""
    import yaml

    try:
        spec = yaml.safe_load(path.read()) or {}
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{path.name}: not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise click.ClickException(
            f"{path.name}: expected a mapping of models, connections, deployments, keys"
        )
    report = ctx.client.fleet.apply(spec, dry_run=dry_run, prune=prune)
    if as_json:
        print_json(report)
        return
    for c in report["changes"]:
        detail = f": {c['detail']}" if c["detail"] else ""
        console.print(
            f"{_MARK.get(c['action'], '?')} {c['kind']} {c['name']} ({c['action']}){detail}", highlight=False
        )
    for name, secret in report.get("keys", {}).items():
        console.print(f"key {name}: {secret}  (shown once: store it now)", highlight=False)
    changes = [c for c in report["changes"] if c["action"] != "differs"]
    if not changes:
        console.print("no changes", highlight=False)
    elif dry_run:
        console.print(f"{len(changes)} change(s) (dry run: nothing changed)", highlight=False)
    else:
        console.print(f"{len(changes)} change(s) applied", highlight=False)


@cli.command()
@json_option
@pass_ctx
@api
def export(ctx: Context, as_json: bool) -> None:
    """Print the fleet as YAML (models, connections, deployments, keys; no secrets): apply takes it back
    (as JSON with --json)."""
    import yaml

    spec = ctx.client.fleet.export()
    if as_json:
        print_json(spec)
        return
    sys.stdout.write(yaml.safe_dump(spec, sort_keys=False))
