"""The CLI group imports a command's module when that command runs: ``COMMANDS`` names every command of
every module, ``--help`` still lists each with its short help, and a plugin's command keeps its place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from superollama.cli.main import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[2]
EAGER = {"serve", "config"}  # defined in cli/main.py itself

# Which module brought which commands, each module imported alone in a fresh interpreter (some import
# another one: models imports jobs).
REGISTERED = """
import importlib, json, sys
from superollama.cli.main import cli
before = set(cli.commands)
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(set(cli.commands) - before)))
"""


def _run(code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_commands_names_every_command_of_every_module_with_its_module() -> None:
    for module in sorted(set(COMMANDS.values())):
        added = set(json.loads(_run(REGISTERED, f"superollama.cli.{module}").strip().splitlines()[-1]))
        own = {name for name, where in COMMANDS.items() if where == module}
        assert own <= added, f"superollama.cli.{module} does not define {sorted(own - added)}"
        strays = {name for name in added - own if name not in COMMANDS}
        assert not strays, f"superollama.cli.{module} defines {sorted(strays)}: add them to COMMANDS"


def test_help_lists_every_command_with_its_short_help() -> None:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {}
    section = result.output.split("Commands:", 1)[1]
    for line in section.splitlines():
        name, _, text = line.strip().partition(" ")
        if name:
            listed[name] = text.strip()
    assert set(listed) == set(COMMANDS) | EAGER
    ctx = click.Context(cli)
    for name, text in listed.items():
        command = cli.get_command(ctx, name)
        assert command is not None, name
        assert text and text == command.get_short_help_str(limit=len(text)), name


def test_an_unknown_command_is_an_error_with_the_nearest_names() -> None:
    result = CliRunner().invoke(cli, ["pul"])
    assert result.exit_code == 2
    assert "No such command 'pul'" in result.output
    if hasattr(click.exceptions, "NoSuchCommand"):  # click 8.4+ suggests
        assert "'pull'" in result.output


def test_a_plugin_command_keeps_its_place_over_a_lazy_one() -> None:
    code = """
import click
from superollama.cli.main import cli

@click.command("pull")
def plugin_pull() -> None:
    "A plugin's pull."

cli.add_command(plugin_pull)  # what a plugin's register_commands does, before any lazy import
ctx = click.Context(cli)
assert cli.get_command(ctx, "ls") is not None  # imports superollama.cli.models, which defines pull too
assert cli.get_command(ctx, "pull") is plugin_pull
print("ok")
"""
    assert _run(code).strip().endswith("ok")
