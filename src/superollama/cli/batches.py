"""``superollama batches create|ls|show|cancel``: OpenAI batches (``/v1/batches``) with the CLI's API key,
so what they list is that key's and the batch runs (and is metered) as that key."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from superollama.cli.main import Context, api, cli, pass_ctx
from superollama.cli.render import age, console, print_json, print_table

__all__ = ["batches"]

_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses")


def _counts(b: dict[str, Any]) -> str:
    c = b["request_counts"]
    return f"{c['completed']}/{c['total']}" + (f" ({c['failed']} failed)" if c["failed"] else "")


def _age(created: int) -> str:
    return age(datetime.fromtimestamp(created, UTC).isoformat())


@cli.group()
def batches() -> None:
    """Batches (OpenAI's /v1/batches): a JSONL file of requests run in the background."""


@batches.command("create")
@click.argument("source")
@click.option("--endpoint", type=click.Choice(_ENDPOINTS), default="/v1/chat/completions", show_default=True)
@click.option("--metadata", "metadata", multiple=True, help="key=value (repeatable).")
@_JSON
@pass_ctx
@api
def create(ctx: Context, source: str, endpoint: str, metadata: tuple[str, ...], as_json: bool) -> None:
    """Run a batch: SOURCE is a JSONL file to upload (purpose batch) or the id of one already uploaded."""
    file_id = source
    path = Path(source)
    if path.is_file():
        with path.open("rb") as f:
            uploaded = ctx.client.request(
                "POST", "/v1/files", files={"file": (path.name, f)}, data={"purpose": "batch"}
            )
        file_id = uploaded["id"]
    pairs = dict(item.split("=", 1) for item in metadata if "=" in item)
    if len(pairs) != len(metadata):
        raise click.BadParameter("metadata must be key=value", param_hint="--metadata")
    body: dict[str, Any] = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}
    if pairs:
        body["metadata"] = pairs
    made = ctx.client.request("POST", "/v1/batches", json=body)
    if as_json:
        print_json(made)
        return
    console.print(f"{made['id']}  {made['status']}  (input {file_id})", highlight=False)


@batches.command("ls")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100))
@_JSON
@pass_ctx
@api
def ls(ctx: Context, limit: int, as_json: bool) -> None:
    """List batches, newest first."""
    page = ctx.client.request("GET", "/v1/batches", params={"limit": limit})
    if as_json:
        print_json(page["data"])
        return
    rows = [
        (b["id"], b["status"], b["endpoint"], _counts(b), b["output_file_id"] or "", _age(b["created_at"]))
        for b in page["data"]
    ]
    print_table(console, ("ID", "STATUS", "ENDPOINT", "DONE", "OUTPUT FILE", "CREATED"), rows)


@batches.command("show")
@click.argument("batch_id")
@pass_ctx
@api
def show(ctx: Context, batch_id: str) -> None:
    """Show a batch (status, request counts, files, errors)."""
    print_json(ctx.client.request("GET", f"/v1/batches/{quote(batch_id)}"))


@batches.command("cancel")
@click.argument("batch_id")
@_JSON
@pass_ctx
@api
def cancel(ctx: Context, batch_id: str, as_json: bool) -> None:
    """Cancel a batch: requests not sent yet are not sent."""
    done = ctx.client.request("POST", f"/v1/batches/{quote(batch_id)}/cancel")
    if as_json:
        print_json(done)
        return
    console.print(f"{done['id']}  {done['status']}  {_counts(done)}", highlight=False)
