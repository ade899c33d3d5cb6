"""``superollama``: the command line. Every command but ``serve`` is a client of the admin API through
``superollama.Client`` (``ctx.client``); ``pull`` and ``keys`` also work offline (no server running)
through the same controller code the server uses.

Adding a command: a module of ``superollama.cli`` (imported in ``main`` below) defines it on ``cli``
with ``@pass_ctx`` and ``@api``, calls a method of ``ctx.client`` (add the method to the client first:
see ``superollama.client``'s docstring), and, when it prints data, takes ``@json_option`` and prints the
API's object with ``print_json`` when ``--json`` is given — the objects, unchanged, so that scripts can
rely on them.

Errors: whatever a command fails with (an answer of the server, a connection refused or dropped, a timeout,
a home that is a file, a permission error) ends as one line on stderr, ``superollama: MESSAGE``, and exit
status 1; ``error_line`` is the one place that words them. A traceback is never what a user sees.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console

from superollama import __version__
from superollama.cli.render import print_json, print_table
from superollama.client._common import find_server_url
from superollama.client._errors import SuperollamaError
from superollama.settings import Settings

if TYPE_CHECKING:
    from superollama.client import Client
    from superollama.plugins import Plugins

__all__ = [
    "Context",
    "api",
    "cli",
    "console",
    "error_line",
    "fail",
    "json_option",
    "main",
    "pass_ctx",
    "print_json",
]

F = TypeVar("F", bound=Callable[..., Any])
console = Console()
err_console = Console(stderr=True)


class Context:
    def __init__(self, overrides: dict[str, Any], plugins: Plugins | None = None) -> None:
        from pydantic import ValidationError

        self._plugins = plugins

        try:
            self.settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:  # one line per bad setting, not a traceback
            lines = [f"SUPEROLLAMA_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
            raise click.ClickException("; ".join(lines)) from None
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
            from superollama.client import Client

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
        try:
            return fn(*args, **kwargs)
        except SuperollamaError as exc:
            fail(exc)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    run_server(ctx.settings.model_copy(update=updates))


@cli.command()
@json_option
@pass_ctx
def config(ctx: Context, as_json: bool) -> None:
    """Print every setting: environment variable, value, description."""
    if as_json:
        print_json(
            [
                {
                    "variable": f"SUPEROLLAMA_{key.upper()}",
                    "value": getattr(ctx.settings, key),
                    "description": f.description,
                }
                for key, f in Settings.model_fields.items()
            ]
        )
        return
    rows = []
    for key, field in Settings.model_fields.items():
        rows.append((f"SUPEROLLAMA_{key.upper()}", getattr(ctx.settings, key), field.description or ""))
    print_table(console, ("VARIABLE", "VALUE", "DESCRIPTION"), rows)


def main() -> None:
    # Each module registers its commands on the group when imported.
    import superollama.cli.agent
    import superollama.cli.batches
    import superollama.cli.connections
    import superollama.cli.deployments
    import superollama.cli.finetune
    import superollama.cli.fleet
    import superollama.cli.gateways
    import superollama.cli.jobs
    import superollama.cli.keys
    import superollama.cli.models
    import superollama.cli.nodes
    import superollama.cli.plugins
    import superollama.cli.rag
    import superollama.cli.rollouts
    import superollama.cli.usage
    import superollama.cli.webhooks  # noqa: F401
    from superollama.plugins import load_plugins

    try:
        plugins = load_plugins()
        plugins.commands(cli)  # a plugin's commands, beside ours (one that fails is in `plugins`)
        cli(prog_name="superollama", obj=plugins)
    except Exception as exc:  # click handles its own usage errors and ^C; everything else is one line
        fail(exc)
