"""Every CLI command that prints data takes ``--json`` (a new command without it fails here)."""

from __future__ import annotations

import click

# Commands that print no data, each with why.
WITHOUT_JSON = {
    "serve": "runs the server",
    "run": "a chat in the terminal: the model's words, streamed",
    "agent": "runs this machine's Ray node: log lines, no data",
    "nodes show": "prints the node as JSON already",
}


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            out += _commands(sub, (*path, name))
    return out


def test_every_command_that_prints_data_takes_json() -> None:
    from superollama.cli import main

    # each module registers its commands when imported, as ``main.main`` imports them
    for module in ("connections", "deployments", "fleet", "gateways", "jobs", "keys", "models"):
        __import__(f"superollama.cli.{module}")
    for module in ("agent", "nodes", "plugins", "rag", "rollouts", "usage", "webhooks"):
        __import__(f"superollama.cli.{module}")
    commands = _commands(main.cli)
    assert len(commands) > 50, [p for p, _ in commands]
    missing = []
    for path, cmd in commands:
        if not path or " ".join(path) in WITHOUT_JSON:
            continue
        is_plain_group = isinstance(cmd, click.Group) and not cmd.invoke_without_command
        takes_json = any("--json" in getattr(p, "opts", []) for p in cmd.params)
        if not is_plain_group and not takes_json:
            missing.append(" ".join(path))
    assert not missing, f"commands without --json: {missing}"
