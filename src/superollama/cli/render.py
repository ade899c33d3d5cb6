"""Human output for the CLI: tables, sizes, ages, pull progress."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

__all__ = [
    "age",
    "console",
    "err_console",
    "human_size",
    "last_event",
    "print_json",
    "print_table",
    "show_progress",
]

console = Console()
err_console = Console(stderr=True)


def print_json(value: Any) -> None:
    """``--json``: the API's objects, unchanged, indented (one document on stdout). Values JSON lacks
    (a path, a secret) are written as their text."""
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def age(iso: str | None) -> str:
    if not iso:
        return "-"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    for unit, span in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= span:
            return f"{int(seconds // span)} {unit} ago"
    return "just now"


def print_table(console: Console, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(c) for c in row))
    console.print(table)


def last_event(events: Iterator[Mapping[str, Any]]) -> dict[str, Any]:
    """The final progress event, the others read and dropped (``--json`` shows no progress)."""
    last: dict[str, Any] = {}
    for event in events:
        last = dict(event)
    return last


def show_progress(console: Console, events: Iterator[Mapping[str, Any]]) -> dict[str, Any]:
    """Render Ollama-shaped pull progress events as bars; return the final event."""
    last: dict[str, Any] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        tasks: dict[str, Any] = {}
        for event in events:
            last = dict(event)
            digest = event.get("digest")
            if digest and event.get("total"):
                if digest not in tasks:
                    tasks[digest] = progress.add_task(f"pulling {digest[7:19]}", total=event["total"])
                progress.update(tasks[digest], completed=event.get("completed") or 0)
            elif event.get("status") not in ("success", "error"):
                progress.console.print(event.get("status", ""))
    return last
