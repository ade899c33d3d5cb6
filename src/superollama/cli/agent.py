"""``superollama agent --join URL --token T``: this machine becomes a node of a ``serve --cluster``
control plane, and stays one (``cluster/join.py`` supervises its Ray node)."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import click

from superollama.cli.main import cli, error_line

__all__ = ["agent"]


def _labels(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        key, sep, val = item.strip().partition("=")
        if not sep or not key or not val:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE[,KEY=VALUE…]")
        out[key] = val
    return out


@cli.command()
@click.option("--join", "url", required=True, help="The control plane's URL, e.g. http://10.0.0.5:11435.")
@click.option(
    "--token",
    required=True,
    envvar="SUPEROLLAMA_JOIN_TOKEN",
    help="A join token (superollama nodes token create); or SUPEROLLAMA_JOIN_TOKEN, kept out of ps.",
)
@click.option("--name", help="This node's name (default: the host name).")
@click.option("--labels", callback=_labels, help="Labels placement matches: gpu=a100,zone=b.")
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    help="A blob store of this node's own (SUPEROLLAMA_NODE_STORE): versions are copied there on need.",
)
@click.option("--node-ip", help="This node's address in the cluster (default: the one that reaches --join).")
@click.option(
    "--fence",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    envvar="SUPEROLLAMA_AGENT_FENCE",
    help="Seconds without the Ray head after which this node stops its Ray node and model processes "
    "(cut off, the cluster has declared it dead), then joins again once the control plane answers.",
)
def agent(
    *,
    url: str,
    token: str,
    name: str | None,
    labels: dict[str, str],
    data: Path | None,
    node_ip: str | None,
    fence: float,
) -> None:
    """Join a `serve --cluster` control plane as a Ray node and keep it joined: the node is started again
    when it ends (the token is checked again first); SIGTERM or Ctrl-C stops it."""
    from superollama.cluster.join import JoinRefused, JoinSpec, NodeSupervisor

    spec = JoinSpec(
        url=url.rstrip("/"),
        token=token,
        name=name or socket.gethostname().split(".")[0],
        labels=labels,
        node_ip=node_ip,
        data=data.resolve() if data is not None else None,
    )

    def say(line: str) -> None:
        click.echo(f"superollama agent: {line}", err=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await NodeSupervisor(spec, say=say, fence=fence).run(stop)
        say(f"stopped node {spec.name}")

    try:
        asyncio.run(run())
    except JoinRefused as exc:
        sys.stderr.write(f"superollama agent: {exc}\n")
        sys.exit(3)  # refused by the control plane (2 is a usage error)
    except OSError as exc:
        sys.stderr.write(error_line(exc) + "\n")
        sys.exit(1)
