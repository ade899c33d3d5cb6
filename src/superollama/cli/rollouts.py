"""``superollama rollout NAME --to V …`` (``--status``, ``--abort``) and ``superollama shadow NAME --to V
--percent P`` (``--off``): canary rollouts and shadow traffic. Clients of
``/admin/v1/deployments/{name}/rollout`` and ``…/shadow``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from superollama.cli.deployments import _print
from superollama.cli.main import Context, api, cli, json_option, pass_ctx
from superollama.cli.render import console, print_json

__all__ = ["print_rollout", "print_shadow", "rollout", "shadow"]

_JSON = json_option


@cli.command()
@click.argument("name")
@click.option("--to", "to", help="The version (or connection model) to roll out.")
@click.option("--canary", default="10", show_default=True, help="Its first weight, in percent.")
@click.option("--step", default="20", show_default=True, help="Percent added at each step.")
@click.option("--every", default="2m", show_default=True, help="Time between steps (2m, 30s, 1s).")
@click.option("--max-error-rate", default="1%", show_default=True, help="Roll back above this error rate.")
@click.option(
    "--max-p95-latency",
    default="+20%",
    show_default=True,
    help="Roll back above this p95: +N% of the stable target's, or a duration (800ms).",
)
@click.option("--min-samples", default=20, show_default=True, help="Canary requests needed to judge.")
@click.option("--status", "status", is_flag=True, help="Show the rollout's state and decisions.")
@click.option("--abort", "abort", is_flag=True, help="Stop it: back to the stable target.")
@_JSON
@pass_ctx
@api
def rollout(
    ctx: Context,
    name: str,
    to: str | None,
    *,
    canary: str,
    step: str,
    every: str,
    max_error_rate: str,
    max_p95_latency: str,
    min_samples: int,
    status: bool,
    abort: bool,
    as_json: bool,
) -> None:
    """Canary rollout: move NAME's traffic to --to step by step while its error rate and p95 latency
    stay within bounds against the stable target; promotes itself at 100 %, or rolls back by itself."""
    data: Mapping[str, Any]
    if status:
        data = ctx.client.rollouts.get(name)
    elif abort:
        data = ctx.client.rollouts.abort(name)
    else:
        if not to:
            raise click.UsageError("--to VERSION is needed to start a rollout (or --status, --abort)")
        policy = {
            "canary": canary,
            "step": step,
            "every": every,
            "max_error_rate": max_error_rate,
            "max_p95_latency": max_p95_latency,
            "min_samples": min_samples,
        }
        data = ctx.client.rollouts.start(name, to, **policy)
    if as_json:
        print_json(data)
    else:
        print_rollout(data)


@cli.command()
@click.argument("name")
@click.option("--to", "to", help="The version (or connection model) that gets the copies.")
@click.option("--percent", default=5, show_default=True, type=click.IntRange(0, 100))
@click.option("--off", is_flag=True, help="Stop mirroring.")
@_JSON
@pass_ctx
@api
def shadow(ctx: Context, name: str, to: str | None, *, percent: int, off: bool, as_json: bool) -> None:
    """Shadow traffic: copy --percent of NAME's requests to --to; clients never wait for it nor see it.
    The comparisons are in `superollama deployments show NAME`."""
    if off:
        data = ctx.client.shadow.off(name)
    elif to:
        data = ctx.client.shadow.set(name, to, percent=percent)
    else:
        raise click.UsageError("--to VERSION (with --percent) or --off")
    _print(data, as_json)


def print_rollout(r: Mapping[str, Any]) -> None:
    p = r["policy"]
    console.print(
        f"rollout {r['deployment']}: {r['state']}, {r['target']} at {r['weight']} % (stable {r['stable']}); "
        f"+{p['step']} % every {p['every']:g} s, max errors {p['max_error_rate']:.2%}, "
        f"min {p['min_samples']} samples",
        highlight=False,
    )
    for d in r.get("decisions") or []:
        console.print(f"  {d['at']}  {d['action']:<8} {d['weight']:>3} %  {d['reason']}", highlight=False)
    for target, s in (r.get("live") or {}).items():
        console.print(
            f"  {target}: {s['requests']} requests, {s['error_rate']:.2%} errors, p95 {s['p95_ms']} ms "
            f"({s['gateways']} gateway processes)",
            highlight=False,
        )


def print_shadow(s: Mapping[str, Any]) -> None:
    on = s.get("shadow")
    head = f"shadow: {on['target']} at {on['percent']} %" if on else "shadow: off"
    console.print(
        f"{head}; {s['samples']} compared ({s['failed']} failed, {s['dropped']} dropped), exact match "
        f"{s['exact_match_rate']}, latency {s['primary_latency_ms']} ms → {s['shadow_latency_ms']} ms, "
        f"length {s['primary_length']} → {s['shadow_length']}",
        highlight=False,
    )
    for x in s.get("last") or []:
        console.print(
            f"  {x['at']}  {x['primary_target']} {x['primary_latency_ms']} ms / {x['target']} "
            f"{x['shadow_latency_ms']} ms, exact {x['exact']}" + (f", {x['error']}" if x["error"] else ""),
            highlight=False,
        )
