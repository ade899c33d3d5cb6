"""``superollama status``: the gateways sharing the registry, the reconciler leader, and the generation of
the registry each gateway has applied (``GET /admin/v1/gateways``)."""

from __future__ import annotations

from superollama.cli.main import Context, api, cli, json_option, pass_ctx
from superollama.cli.render import age, console, print_json, print_table

__all__ = ["status"]


@cli.command()
@json_option
@pass_ctx
@api
def status(ctx: Context, as_json: bool) -> None:
    """Gateways alive, the reconciler leader, and the generation each gateway has seen."""
    data = ctx.client.gateways.list()
    if as_json:
        print_json(data)
        return
    leader = data.get("leader") or "none"
    console.print(
        f"answered by {data['gateway']}; leader {leader}; registry generation {data['generation']} "
        f"({data['dialect']})"
    )
    rows = [
        (
            g["id"] + (" *" if g["id"] == data["gateway"] else ""),
            g["url"] or "",
            "alive" if g["alive"] else "dead",
            "leader" if g["leader"] else "",
            str(g["generation"]),
            age(g["seen_at"]) if g["seen_at"] else "",
        )
        for g in data["gateways"]
    ]
    print_table(console, ("GATEWAY", "URL", "STATE", "ROLE", "GENERATION", "SEEN"), rows)
