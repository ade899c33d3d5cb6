"""``superollama``: the command line. Every command but ``serve`` is a client of the admin API;
``pull`` also works offline (no server running) through the same controller code the server uses."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from superollama import __version__
from superollama.cli.client import AdminClient, ApiError, find_server_url
from superollama.cli.render import print_table
from superollama.settings import Settings

__all__ = ["Context", "api", "cli", "console", "main", "pass_ctx"]

F = TypeVar("F", bound=Callable[..., Any])
console = Console()
err_console = Console(stderr=True)


class Context:
    def __init__(self, overrides: dict[str, Any]) -> None:
        from pydantic import ValidationError

        try:
            self.settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:  # one line per bad setting, not a traceback
            lines = [f"SUPEROLLAMA_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
            raise click.ClickException("; ".join(lines)) from None
        self._client: AdminClient | None = None

    @property
    def client(self) -> AdminClient:
        if self._client is None:
            key = self.settings.api_key
            self._client = AdminClient(
                find_server_url(self.settings), key.get_secret_value() if key is not None else None
            )
        return self._client


pass_ctx = click.make_pass_decorator(Context)


def api(fn: F) -> F:
    """Turn an ``ApiError`` into one clear line on stderr and exit status 1."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            err_console.print(f"[red]Error:[/red] {exc.message}", highlight=False)
            sys.exit(1)

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
    ctx.obj = Context({"home": home, "url": url, "api_key": api_key})


@cli.command()
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (default 11435; 0 picks a free one).")
@click.option("--keep-alive", type=float, help="Seconds an idle model stays loaded (default 300).")
@click.option("--insecure", is_flag=True, default=None, help="Allow a non-loopback address without API keys.")
@click.option(
    "--workers",
    type=click.IntRange(0, 512),
    help="Worker processes sharing the port (default: one per CPU; 1: a single process).",
)
@pass_ctx
def serve(ctx: Context, /, **given: Any) -> None:
    """Run the server: gateway, admin API and the local node agent (with --workers above 1: that many
    processes on the port, one primary and replicas)."""
    from superollama.app import serve as run_server

    updates = {k: v for k, v in given.items() if v is not None}
    run_server(ctx.settings.model_copy(update=updates))


@cli.command()
@pass_ctx
def config(ctx: Context) -> None:
    """Print every setting: environment variable, value, description."""
    rows = []
    for key, field in Settings.model_fields.items():
        rows.append((f"SUPEROLLAMA_{key.upper()}", getattr(ctx.settings, key), field.description or ""))
    print_table(console, ("VARIABLE", "VALUE", "DESCRIPTION"), rows)


def main() -> None:
    # Each module registers its commands on the group when imported.
    import superollama.cli.connections
    import superollama.cli.jobs
    import superollama.cli.keys
    import superollama.cli.models
    import superollama.cli.usage  # noqa: F401

    cli(prog_name="superollama")
