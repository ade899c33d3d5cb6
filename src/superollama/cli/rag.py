"""``superollama files ls|upload|rm``, ``superollama vector-stores ls|create|add|search|rm`` and
``superollama grounding ls|set|rm``: clients of ``/v1/files``, ``/v1/vector_stores`` (with the CLI's API
key, so what they list is that key's) and ``/admin/v1/grounding``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import orjson

from superollama.cli.main import Context, api, cli, json_option, pass_ctx
from superollama.cli.render import console, print_json, print_table
from superollama.client import SuperollamaError

__all__ = ["files", "grounding", "vector_stores"]

_JSON = json_option
_WAIT_STEP = 0.5


_dump = print_json


@cli.group()
def files() -> None:
    """Files (OpenAI's /v1/files): documents for vector stores, fine-tuning data."""


@files.command("ls")
@click.option("--purpose", help="Only files of this purpose.")
@_JSON
@pass_ctx
@api
def files_ls(ctx: Context, purpose: str | None, as_json: bool) -> None:
    """List files."""
    found = ctx.client.files.list(purpose=purpose or None)
    if as_json:
        _dump(found)
        return
    rows = [(f["id"], f["filename"], f["purpose"], f["bytes"]) for f in found]
    print_table(console, ("ID", "FILENAME", "PURPOSE", "BYTES"), rows)


@files.command("upload")
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--purpose", default="assistants", show_default=True, help="assistants, fine-tune, batch …")
@_JSON
@pass_ctx
@api
def files_upload(ctx: Context, paths: tuple[Path, ...], purpose: str, as_json: bool) -> None:
    """Upload files; prints each one's id."""
    done = [ctx.client.files.upload(path, purpose=purpose) for path in paths]
    if as_json:
        _dump(done)
        return
    for f in done:
        console.print(f"{f['id']}  {f['filename']}  {f['bytes']} bytes", highlight=False)


@files.command("rm")
@click.argument("file_ids", nargs=-1, required=True)
@_JSON
@pass_ctx
@api
def files_rm(ctx: Context, file_ids: tuple[str, ...], as_json: bool) -> None:
    """Delete files (they leave every vector store they were in)."""
    done = []
    for file_id in file_ids:
        done.append(ctx.client.files.delete(file_id))
        if not as_json:
            console.print(f"deleted {file_id}", highlight=False)
    if as_json:
        _dump(done)


@cli.group("vector-stores")
def vector_stores() -> None:
    """Vector stores (OpenAI's /v1/vector_stores): indexed files to search and ground chat in."""


def _store_row(s: Mapping[str, Any]) -> tuple[Any, ...]:
    c = s["file_counts"]
    counts = f"{c['completed']}/{c['total']}" + (f" ({c['failed']} failed)" if c["failed"] else "")
    return (
        s["id"],
        s.get("name") or "",
        s["status"],
        counts,
        s.get("embedding_model", ""),
        s.get("engine", ""),
    )


@vector_stores.command("ls")
@_JSON
@pass_ctx
@api
def vs_ls(ctx: Context, as_json: bool) -> None:
    """List vector stores."""
    stores = ctx.client.vector_stores.list(limit=100)
    if as_json:
        _dump(stores)
        return
    print_table(
        console,
        ("ID", "NAME", "STATUS", "FILES", "EMBEDDING MODEL", "ENGINE"),
        [_store_row(s) for s in stores],
    )


@vector_stores.command("create")
@click.argument("name")
@click.option("--embedding-model", help="A routable embedding model (default: the server's setting).")
@click.option("--engine", type=click.Choice(["sqlite-vec", "lancedb"]), help="Vector store engine.")
@_JSON
@pass_ctx
@api
def vs_create(
    ctx: Context, name: str, embedding_model: str | None, engine: str | None, as_json: bool
) -> None:
    """Create a vector store; prints its id."""
    store = ctx.client.vector_stores.create(
        name=name or None, embedding_model=embedding_model or None, engine=engine or None
    )
    if as_json:
        _dump(store)
        return
    console.print(store["id"], highlight=False)


@vector_stores.command("add")
@click.argument("store_id")
@click.argument("items", nargs=-1, required=True)
@click.option("--max-tokens", type=int, help="Static chunking: tokens per chunk (100-4096, default 800).")
@click.option("--overlap", type=int, help="Static chunking: tokens shared by neighbours (default 400).")
@click.option("--attribute", "attributes", multiple=True, help="KEY=VALUE on every chunk (repeatable).")
@click.option("--no-wait", is_flag=True, help="Return once the batch is queued.")
@_JSON
@pass_ctx
@api
def vs_add(
    ctx: Context,
    store_id: str,
    items: tuple[str, ...],
    *,
    max_tokens: int | None,
    overlap: int | None,
    attributes: tuple[str, ...],
    no_wait: bool,
    as_json: bool,
) -> None:
    """Add files (ids, or paths that are uploaded first) as one batch; waits until they are indexed."""
    file_ids = []
    for item in items:
        path = Path(item)
        if path.is_file():
            file_ids.append(ctx.client.files.upload(path, purpose="assistants")["id"])
        else:
            file_ids.append(item)
    body: dict[str, Any] = {}
    if max_tokens is not None:
        static = {
            "max_chunk_size_tokens": max_tokens,
            "chunk_overlap_tokens": overlap if overlap is not None else min(400, max_tokens // 2),
        }
        body["chunking_strategy"] = {"type": "static", "static": static}
    if attributes:
        body["attributes"] = dict(_pair(a) for a in attributes)
    stores = ctx.client.vector_stores
    batch = stores.create_batch(store_id, file_ids, **body)
    while not no_wait and batch["status"] == "in_progress":
        time.sleep(_WAIT_STEP)
        batch = stores.get_batch(store_id, batch["id"])
    if as_json:
        _dump(batch)
        return
    c = batch["file_counts"]
    console.print(
        f"{batch['id']}: {batch['status']} — {c['completed']} completed, {c['failed']} failed, "
        f"{c['in_progress']} in progress",
        highlight=False,
    )
    if c["failed"]:
        listing = stores.batch_files(store_id, batch["id"], filter="failed")
        for f in listing["data"]:
            console.print(f"  {f['id']}: {(f.get('last_error') or {}).get('message', '')}", highlight=False)
        raise SuperollamaError(f"{c['failed']} file(s) could not be indexed")


def _pair(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r}: use KEY=VALUE")
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        parsed = value
    return key, parsed if isinstance(parsed, str | int | float | bool) else value


@vector_stores.command("search")
@click.argument("store_id")
@click.argument("query")
@click.option("-k", "--max-results", "k", type=click.IntRange(1, 50), default=5, show_default=True)
@click.option("--where", "where", multiple=True, help="KEY=VALUE an attribute must equal (repeatable).")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Lowest score kept.")
@_JSON
@pass_ctx
@api
def vs_search(
    ctx: Context,
    store_id: str,
    *,
    query: str,
    k: int,
    where: tuple[str, ...],
    threshold: float | None,
    as_json: bool,
) -> None:
    """Search a vector store."""
    body: dict[str, Any] = {"max_num_results": k}
    filters = [{"type": "eq", "key": key, "value": value} for key, value in (_pair(w) for w in where)]
    if filters:
        body["filters"] = filters[0] if len(filters) == 1 else {"type": "and", "filters": filters}
    if threshold is not None:
        body["ranking_options"] = {"score_threshold": threshold}
    page = ctx.client.vector_stores.search(store_id, query, **body)
    if as_json:
        _dump(page["data"])
        return
    for hit in page["data"]:
        text = " ".join(hit["content"][0]["text"].split())
        console.print(f"{hit['score']:.3f}  {hit['filename']}  {text[:100]}", highlight=False)


@vector_stores.command("rm")
@click.argument("store_ids", nargs=-1, required=True)
@_JSON
@pass_ctx
@api
def vs_rm(ctx: Context, store_ids: tuple[str, ...], as_json: bool) -> None:
    """Delete vector stores and their chunks (the files stay)."""
    done = []
    for store_id in store_ids:
        done.append(ctx.client.vector_stores.delete(store_id))
        if not as_json:
            console.print(f"deleted {store_id}", highlight=False)
    if as_json:
        _dump(done)


@cli.group()
def grounding() -> None:
    """Grounded chat: a model or deployment that answers from vector stores, with citations."""


@grounding.command("ls")
@_JSON
@pass_ctx
@api
def grounding_ls(ctx: Context, as_json: bool) -> None:
    """List groundings."""
    items = ctx.client.grounding.list()
    if as_json:
        _dump(items)
        return
    rows = [
        (g["name"], ", ".join(g["vector_store_ids"]), g["top_k"], g["score_threshold"] or "") for g in items
    ]
    print_table(console, ("MODEL", "VECTOR STORES", "TOP K", "THRESHOLD"), rows)


@grounding.command("set")
@click.argument("model")
@click.option(
    "--vector-store", "stores", multiple=True, required=True, help="A vector store id (repeatable)."
)
@click.option("--top-k", type=click.IntRange(1, 50), default=4, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), help="Lowest score a source needs.")
@click.option("--template", help="System prompt with {context} (and optionally {question}).")
@_JSON
@pass_ctx
@api
def grounding_set(
    ctx: Context,
    model: str,
    *,
    stores: tuple[str, ...],
    top_k: int,
    threshold: float | None,
    template: str | None,
    as_json: bool,
) -> None:
    """Ground a model's (or deployment's) chat in vector stores."""
    got = ctx.client.grounding.set(model, stores, top_k=top_k, score_threshold=threshold, template=template)
    if as_json:
        _dump(got)
        return
    console.print(
        f"{model} answers from {', '.join(got['vector_store_ids'])} (top {got['top_k']})", highlight=False
    )


@grounding.command("rm")
@click.argument("model")
@_JSON
@pass_ctx
@api
def grounding_rm(ctx: Context, model: str, as_json: bool) -> None:
    """Stop grounding a model's chat."""
    deleted = ctx.client.grounding.delete(model)
    if as_json:
        _dump(deleted)
        return
    console.print(f"{model} is no longer grounded", highlight=False)
