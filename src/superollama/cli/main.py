"""``superollama``: the command line. Every command but ``serve`` is a client of the admin API through
``superollama.Client`` (``ctx.client``); ``pull`` and ``keys`` also work offline (no server running)
through the same controller code the server uses.

Adding a command: a module of ``superollama.cli`` defines it on ``cli`` with ``@pass_ctx`` and ``@api``,
calls a method of ``ctx.client`` (add the method to the client first: see ``superollama.client``'s
docstring), and, when it prints data, takes ``@json_option`` and prints the API's object with
``print_json`` (``superollama.cli.render``) when ``--json`` is given — the objects, unchanged, so that
scripts can rely on them. Then name the command in ``COMMANDS`` below, with its module: the group imports
a command's module only when that command runs (or ``--help`` lists them all), so that ``serve`` does not
carry every client command, rich and the client in its memory (a unit test checks the map against what
the modules define).

Errors: whatever a command fails with (an answer of the server, a connection refused or dropped, a timeout,
a home that is a file, a permission error) ends as one line on stderr, ``superollama: MESSAGE``, and exit
status 1; ``error_line`` is the one place that words them. A traceback is never what a user sees.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from superollama import __version__
from superollama.settings import ENV_PREFIX, Settings, SettingsError, described, shown

if TYPE_CHECKING:
    from superollama.client import Client
    from superollama.plugins import Plugins

__all__ = [
    "COMMANDS",
    "Context",
    "LazyGroup",
    "api",
    "cli",
    "error_line",
    "fail",
    "json_option",
    "main",
    "pass_ctx",
]

F = TypeVar("F", bound=Callable[..., Any])

# Every command outside this module: its name → the module of ``superollama.cli`` that defines it.
COMMANDS: dict[str, str] = {
    "agent": "agent",
    "batches": "batches",
    "connect": "connections",
    "connections": "connections",
    "disconnect": "connections",
    "deploy": "deployments",
    "deployments": "deployments",
    "pause": "deployments",
    "promote": "deployments",
    "resume": "deployments",
    "rollback": "deployments",
    "scale": "deployments",
    "split": "deployments",
    "finetune": "finetune",
    "apply": "fleet",
    "export": "fleet",
    "status": "gateways",
    "jobs": "jobs",
    "keys": "keys",
    "cp": "models",
    "disable": "models",
    "enable": "models",
    "events": "models",
    "ls": "models",
    "mv": "models",
    "ps": "models",
    "pull": "models",
    "rm": "models",
    "run": "models",
    "show": "models",
    "stop": "models",
    "storage": "models",
    "nodes": "nodes",
    "plugins": "plugins",
    "files": "rag",
    "grounding": "rag",
    "vector-stores": "rag",
    "rollout": "rollouts",
    "shadow": "rollouts",
    "usage": "usage",
    "webhooks": "webhooks",
}


class LazyGroup(click.Group):
    """A group whose commands live in modules imported on first use (``lazy``: name → module).

    A command already on the group when its module is imported keeps its place: that is a plugin's
    (``register_commands`` runs before any lazy import), and a plugin's command has always won over a
    built-in one of the same name."""

    def __init__(self, *args: Any, lazy: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            module = self.lazy.get(cmd_name)
            # An unknown name is an error whose "Did you mean" click draws from ``self.commands``: all
            # of them are loaded for it.
            for each in [module] if module is not None else sorted(set(self.lazy.values())):
                self.load(each)
        return self.commands.get(cmd_name)

    def load(self, module: str) -> None:
        """Import ``module`` (whose decorators add its commands to this group)."""
        earlier = dict(self.commands)
        importlib.import_module(module)
        self.commands.update(earlier)


class Context:
    def __init__(self, overrides: dict[str, Any], plugins: Plugins | None = None) -> None:
        self._plugins = plugins
        given = {k: v for k, v in overrides.items() if v is not None}
        self.settings = _settings(lambda: Settings.from_env(**given))
        self._client: Client | None = None

    @property
    def plugins(self) -> Plugins:
        """The plugins ``main`` loaded (their commands are on the group), else loaded now."""
        if self._plugins is None:
            from superollama.plugins import load_plugins

            self._plugins = load_plugins()
        return self._plugins

    @property
    def client(self) -> Client:
        """The admin API's client (httpx is imported here, on first use: ``serve`` never pays for it)."""
        if self._client is None:
            from superollama.client import Client, find_server_url

            key = self.settings.api_key
            self._client = Client(
                find_server_url(self.settings), key.get_secret_value() if key is not None else ""
            )
        return self._client


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output: the API's objects as JSON."
)


def error_line(exc: BaseException) -> str:
    """The one line a failed command prints for ``exc``."""
    from pydantic import ValidationError

    from superollama.client import SuperollamaError
    from superollama.errors import SuperOllamaError

    if isinstance(exc, SuperollamaError | SuperOllamaError):
        text = exc.message
    elif isinstance(exc, ValidationError):  # a setting (SUPEROLLAMA_*) that does not parse
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        text = "invalid settings: " + "; ".join(problems)
    elif isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        text = f"{exc.strerror}{where}"
    else:
        text = f"internal error: {type(exc).__name__}: {exc}".rstrip(": ")
    return "superollama: " + " ".join(str(text).split())


def fail(exc: BaseException) -> NoReturn:
    """Print ``exc`` as one line on stderr and exit with status 1."""
    sys.stderr.write(error_line(exc) + "\n")
    sys.stderr.flush()
    sys.exit(1)


def api(fn: F) -> F:
    """Turn a ``SuperollamaError`` (the client's) into one clear line on stderr and exit status 1
    (``main`` does the same for every other error; this keeps a command's failure inside the command when
    it is invoked directly)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from superollama.client import SuperollamaError  # the command is the client's: it loads it anyway

        try:
            return fn(*args, **kwargs)
        except SuperollamaError as exc:
            fail(exc)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper  # type: ignore[return-value]


@click.group(
    cls=LazyGroup,
    lazy={name: f"superollama.cli.{module}" for name, module in COMMANDS.items()},
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("--home", type=click.Path(path_type=Path), help="Home directory (SUPEROLLAMA_HOME).")
@click.option("--url", help="Server URL for client commands (SUPEROLLAMA_URL).")
@click.option("--api-key", "api_key", help="API key client commands send (SUPEROLLAMA_API_KEY).")
@click.version_option(__version__, prog_name="superollama")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, url: str | None, api_key: str | None) -> None:
    """Super Ollama: provision, manage and serve models behind the OpenAI API."""
    plugins: Plugins | None = ctx.obj  # those ``main`` loaded (``cli(obj=plugins)``)
    ctx.obj = Context({"home": home, "url": url, "api_key": api_key}, plugins)


@cli.command()
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (default 11435; 0 picks a free one).")
@click.option("--keep-alive", type=float, help="Seconds an idle model stays loaded (default 300).")
@click.option("--insecure", is_flag=True, default=None, help="Allow a non-loopback address without API keys.")
@click.option(
    "--workers",
    type=click.IntRange(0, 512),
    help="Worker processes sharing the port (default: one per CPU; 1: a single process, or with "
    "--cluster one worker beside the agent process that is the Ray driver).",
)
@click.option(
    "--cluster",
    is_flag=True,
    default=None,
    help="Run the models on a Ray cluster: join --cluster-address or start a head on 127.0.0.1.",
)
@click.option("--cluster-address", help="host:port of a Ray head to join (with --cluster).")
@click.option("--cluster-host", help="This node's address in the cluster (default 127.0.0.1).")
@click.option(
    "--db",
    "database_url",
    help="The registry's database, e.g. postgresql://user@host/db (default: SQLite in the home).",
)
@click.option(
    "--redis",
    "redis_url",
    help="Redis URL (redis://host:6379/0): shared rate limits, and the control store of the Ray head "
    "--cluster starts (SUPEROLLAMA_CLUSTER_REDIS_URL for another one).",
)
@pass_ctx
def serve(ctx: Context, /, **given: Any) -> None:
    """Run the server: gateway, admin API and the local node agent (with --workers above 1: that many
    processes on the port, one primary and replicas)."""
    from superollama.app import serve as run_server

    updates = {k: v for k, v in given.items() if v is not None}
    run_server(_settings(lambda: ctx.settings.replace(**updates)))


@cli.command()
@json_option
@pass_ctx
def config(ctx: Context, as_json: bool) -> None:
    """Print every setting: environment variable, value, description."""
    from superollama.cli.render import console, print_json, print_table

    rows = [
        (f"{ENV_PREFIX}{key.upper()}", shown(getattr(ctx.settings, key)), description)
        for key, description in described(Settings)
    ]
    if as_json:
        print_json([{"variable": v, "value": value, "description": d} for v, value, d in rows])
        return
    print_table(console, ("VARIABLE", "VALUE", "DESCRIPTION"), rows)


def _settings(make: Callable[[], Settings]) -> Settings:
    """``make()``, or a usage error with one line per bad setting (named as its variable), not a
    traceback."""
    try:
        return make()
    except SettingsError as exc:
        lines = [f"{ENV_PREFIX}{name.upper()}: {why}" for name, why in exc.problems]
        raise click.ClickException("; ".join(lines)) from None


def main() -> None:
    from superollama.plugins import load_plugins

    try:
        plugins = load_plugins()
        plugins.commands(cli)  # a plugin's commands, beside ours (one that fails is in `plugins`)
        cli(prog_name="superollama", obj=plugins)
    except Exception as exc:  # click handles its own usage errors and ^C; everything else is one line
        fail(exc)
