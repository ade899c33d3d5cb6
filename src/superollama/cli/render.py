"""Human output for the CLI: tables, sizes, ages, pull progress."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

__all__ = ["age", "human_size", "print_table", "show_progress"]


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


def show_progress(console: Console, events: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """Render Ollama-shaped pull progress events as bars; return the final event."""
    last: dict[str, Any] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        tasks: dict[str, Any] = {}
        for event in events:
            last = event
            digest = event.get("digest")
            if digest and event.get("total"):
                if digest not in tasks:
                    tasks[digest] = progress.add_task(f"pulling {digest[7:19]}", total=event["total"])
                progress.update(tasks[digest], completed=event.get("completed") or 0)
            elif event.get("status") not in ("success", "error"):
                progress.console.print(event.get("status", ""))
    return last
