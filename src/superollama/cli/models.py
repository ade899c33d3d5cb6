"""Model commands: pull, ls, ps, show, cp, mv, storage, rm, enable, disable, stop, events, run."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from superollama.cli.jobs import failure_reason
from superollama.cli.main import Context, api, cli, json_option, pass_ctx
from superollama.cli.render import (
    age,
    console,
    err_console,
    human_size,
    last_event,
    print_json,
    print_table,
    show_progress,
)
from superollama.client import SuperollamaError
from superollama.client.types import Progress
from superollama.core import ModelRef, NameError_
from superollama.settings import Settings

if TYPE_CHECKING:
    from superollama.core import VersionRecord

__all__ = ["pull", "run"]


def _source_uri(source: str) -> str:
    """What to pull: a URI as given; a local path (relative to where the CLI runs, not the server) as a
    file:// URI; a bare model name (``llama3:8b``, ``namespace/model:tag``) from the Ollama registry."""
    if "://" in source:
        return source
    path = Path(source).expanduser()
    if path.exists():
        return path.resolve().as_uri()
    looks_like_path = source.startswith((".", "/", "~")) or source.endswith((".gguf", ".safetensors"))
    if not looks_like_path:
        try:
            ModelRef.parse(source)
        except NameError_:
            pass
        else:
            return f"ollama://{source}"
    raise click.BadParameter(f"{source}: no such file (use file://, hf://, ollama:// or https://)")


@cli.command()
@click.argument("source")
@click.option("--name", help="Name the version (name:tag); default: from the source.")
@click.option("--runtime", help="Serve it with this runtime instead of the format's default.")
@click.option("--node", help="Also copy its files to this node's own store (serve --cluster).")
@json_option
@pass_ctx
@api
def pull(
    ctx: Context, source: str, *, name: str | None, runtime: str | None, node: str | None, as_json: bool
) -> None:
    """Pull a model from SOURCE (file://PATH or a local path) into the store and register it; with
    --node, its files are then copied to that node (placement otherwise copies them when it chooses)."""
    uri = _source_uri(source)
    if ctx.client.reachable():
        job: list[str] = []

        def remember_job(events: Iterator[Progress]) -> Iterator[Progress]:
            for event in events:
                if "job" in event and not job:
                    job.append(event["job"])
                yield event

        events = remember_job(ctx.client.models.pull(uri, name=name, runtime=runtime, node=node))
        try:
            final = last_event(events) if as_json else show_progress(console, events)
        except KeyboardInterrupt:
            if job:
                ctx.client.jobs.cancel(job[0])
                err_console.print(f"cancelled {job[0]} (pull again to resume)")
            sys.exit(130)
        if final.get("status") != "success":
            raise SuperollamaError(f"pull failed: {failure_reason(final)}")
        on = final.get("node")
        if as_json:
            print_json({**final["model"], "node": on} if on else final["model"])
            return
        where = f" (its files on node {on['name']}, {on['seconds']:.1f} s)" if on else ""
        console.print(f"pulled {final['model']['name']}{where}")
        return
    if node is not None:
        raise SuperollamaError(f"--node needs a running server (none at {ctx.client.base_url})")
    err = err_console if as_json else console
    err.print(f"[dim]no server at {ctx.client.base_url}: pulling into {ctx.settings.home}[/dim]")
    record = asyncio.run(_pull_offline(ctx.settings, uri, name, runtime))
    if as_json:
        from superollama.admin.serialize import version_json

        print_json(version_json(record))
        return
    console.print(f"pulled {record.name}")


async def _pull_offline(settings: Settings, uri: str, name: str | None, runtime: str | None) -> VersionRecord:
    from superollama.app import open_catalog
    from superollama.errors import SuperOllamaError

    registry, _store, controller = await open_catalog(settings)
    events: list[dict[str, Any]] = []
    try:
        record = await controller.pull(
            uri, name, actor="cli", runtime=runtime, on_progress=lambda p: events.append(p.as_dict())
        )
    except SuperOllamaError as exc:
        raise SuperollamaError(f"pull failed: {exc.message}", status=exc.status) from exc
    finally:
        await registry.close()
    return record


@cli.command("ls")
@click.option("--enabled/--disabled", "enabled", default=None, help="Only enabled or disabled versions.")
@click.option("--format", "fmt", help="Only this format (gguf, safetensors…).")
@json_option
@pass_ctx
@api
def list_models(ctx: Context, enabled: bool | None, fmt: str | None, as_json: bool) -> None:
    """List versions."""
    models = ctx.client.models.list(enabled=enabled, format=fmt or None)
    if as_json:
        print_json(models)
        return
    rows = [
        (
            m["name"],
            (m["digest"] or "")[7:19],
            human_size(m["size"]),
            m["format"],
            m.get("quantization") or "-",
            "yes" if m["enabled"] else "no",
            age(m["created_at"]),
        )
        for m in models
    ]
    print_table(console, ("NAME", "ID", "SIZE", "FORMAT", "QUANT", "ENABLED", "MODIFIED"), rows)


@cli.command()
@json_option
@pass_ctx
@api
def ps(ctx: Context, as_json: bool) -> None:
    """List running instances."""
    instances = ctx.client.instances.list()
    if as_json:
        print_json(instances)
        return
    rows = [
        (
            i["version"],
            i["id"],
            i["state"],
            i.get("node", ""),
            i["device"],
            i["pid"],
            i["endpoint"],
            i["in_flight"],
            age(i["started_at"]),
        )
        for i in instances
    ]
    columns = ("NAME", "INSTANCE", "STATE", "NODE", "DEVICE", "PID", "ENDPOINT", "IN FLIGHT", "STARTED")
    print_table(console, columns, rows)


@cli.command()
@click.argument("name")
@json_option
@pass_ctx
@api
def show(ctx: Context, name: str, as_json: bool) -> None:
    """Show a version's metadata, files and instances."""
    info = ctx.client.models.get(name)
    if as_json:
        print_json(info)
        return
    meta = info["metadata"]
    fields = [
        ("name", info["name"]),
        ("format", info["format"]),
        ("architecture", info.get("architecture")),
        ("parameters", info.get("parameter_size") or info.get("parameters")),
        ("quantization", info.get("quantization")),
        ("context length", info.get("context_length")),
        ("size", human_size(info["size"])),
        ("enabled", info["enabled"]),
        ("source", info["source"]),
        ("storage root", info.get("storage_root", "home")),
        ("created", info["created_at"]),
    ]
    print_table(console, ("", ""), [(k, v if v is not None else "-") for k, v in fields])
    console.print("\n[bold]files[/bold]")
    print_table(
        console,
        ("DIGEST", "SIZE", "TYPE"),
        [(la["digest"], human_size(la["size"]), la["mediaType"]) for la in info["layers"]],
    )
    if meta.get("chat_template"):
        console.print("\n[bold]template[/bold]")
        console.print(meta["chat_template"], markup=False, highlight=False)
    if info["instances"]:
        console.print("\n[bold]instances[/bold]")
        print_table(
            console,
            ("INSTANCE", "STATE", "PID", "ENDPOINT"),
            [(i["id"], i["state"], i["pid"], i["endpoint"]) for i in info["instances"]],
        )


@cli.command()
@click.argument("source")
@click.argument("destination")
@click.option("--runtime", help="Serve the copy with this runtime (e.g. llamacpp for a LoRA adapter).")
@json_option
@pass_ctx
@api
def cp(ctx: Context, source: str, destination: str, runtime: str | None, as_json: bool) -> None:
    """Copy a version to a new name (same files, no bytes copied)."""
    copied = ctx.client.models.copy(source, destination, runtime=runtime)
    if as_json:
        print_json(copied)
        return
    console.print(f"copied '{source}' to '{destination}'")


@cli.command()
@click.argument("source")
@click.argument("destination", required=False)
@click.option(
    "--to",
    "to",
    metavar="ROOT",
    help="Move its files to this storage root: home, a declared root's name or its exact path "
    "(see `superollama storage`).",
)
@click.option(
    "--to-node",
    "to_node",
    metavar="NODE",
    help="Move its running instance to this node (serve --cluster): ready there before the old one "
    "drains and stops.",
)
@click.option("--instance", metavar="ID", help="With --to-node: which instance (default: one elsewhere).")
@json_option
@pass_ctx
@api
def mv(
    ctx: Context,
    source: str,
    *,
    destination: str | None,
    to: str | None,
    to_node: str | None,
    instance: str | None,
    as_json: bool,
) -> None:
    """Rename a version (mv OLD NEW), move its files to another storage root (mv NAME --to ROOT)
    while it keeps serving (the versions sharing its files (cp) stay where they are), or move its
    running instance to another node (mv NAME --to-node NODE) with no request failing."""
    if sum(x is not None for x in (destination, to, to_node)) != 1:
        raise click.UsageError(
            "give one of a new name (mv OLD NEW), a storage root (mv NAME --to ROOT) "
            "or a node (mv NAME --to-node NODE)"
        )
    if to_node is not None:
        moved = ctx.client.instances.move(source, to_node, instance=instance)
        if as_json:
            print_json(moved)
            return
        was = moved["from"]
        console.print(
            f"moved '{source}' from node {was['node']} ({was['instance']}) to node {moved['node']} "
            f"({moved['instance']}) in {moved['seconds']:.1f} s"
        )
        return
    if to is not None:
        events = ctx.client.models.move(source, to)  # as typed: the server resolves it
        final = last_event(events) if as_json else show_progress(console, events)
        if final.get("status") != "success":
            raise SuperollamaError(str((final.get("error") or {}).get("message", final)))
        if as_json:
            print_json(final)
            return
        where = f"{final['root']} ({final['path']})" if final["root"] != final["path"] else final["path"]
        if final.get("unchanged"):
            console.print(f"'{source}' is in storage root {where} already: nothing to move")
        else:
            console.print(f"moved '{source}' from {final['from']} to {where}")
        return
    assert destination is not None
    renamed = ctx.client.models.rename(source, destination)
    if as_json:
        print_json(renamed)
        return
    console.print(f"renamed '{source}' to '{destination}'")


@cli.command()
@json_option
@pass_ctx
@api
def storage(ctx: Context, as_json: bool) -> None:
    """List the storage roots (`mv NAME --to ROOT`): the home and the declared ones
    (SUPEROLLAMA_STORAGE_ROOTS), with free space, versions held, and why a root cannot be used."""
    roots = ctx.client.storage.list()
    if as_json:
        print_json(roots)
        return
    rows = [
        (
            r["name"],
            r["path"],
            human_size(r["free_bytes"]),
            human_size(r["total_bytes"]),
            len(r["versions"]),
            "ok" if r["usable"] else f"unusable: {r['problem']}",
        )
        for r in roots
    ]
    print_table(console, ("ROOT", "PATH", "FREE", "SIZE", "VERSIONS", "STATUS"), rows)


@cli.command()
@click.argument("name")
@click.option(
    "--force",
    is_flag=True,
    help="Drain and stop a loaded model first (new requests get 404; those in flight finish, "
    "bounded by SUPEROLLAMA_DRAIN_TIMEOUT).",
)
@json_option
@pass_ctx
@api
def rm(ctx: Context, name: str, force: bool, as_json: bool) -> None:
    """Remove a version (its unreferenced files are garbage-collected)."""
    result = ctx.client.models.delete(name, force=force)
    if as_json:
        print_json(result)
        return
    cut = int(result.get("cut") or 0)
    note = f" ({cut} request{'s' if cut != 1 else ''} in flight {'was' if cut == 1 else 'were'} cut short)"
    console.print(f"deleted '{name}'" + (note if cut else ""))


@cli.command()
@click.argument("name")
@json_option
@pass_ctx
@api
def enable(ctx: Context, name: str, as_json: bool) -> None:
    """Make a version routable again."""
    version = ctx.client.models.enable(name)
    if as_json:
        print_json(version)
        return
    console.print(f"enabled '{name}'")


@cli.command()
@click.argument("name")
@json_option
@pass_ctx
@api
def disable(ctx: Context, name: str, as_json: bool) -> None:
    """Stop routing to a version (404, hidden from lists); its instances drain and stop."""
    version = ctx.client.models.disable(name)
    if as_json:
        print_json(version)
        return
    console.print(f"disabled '{name}'")


@cli.command()
@click.argument("name")
@json_option
@pass_ctx
@api
def stop(ctx: Context, name: str, as_json: bool) -> None:
    """Unload a running model now (it loads again on the next request)."""
    unloaded = ctx.client.models.unload(name)
    if as_json:
        print_json({"unloaded": unloaded})
        return
    console.print(f"stopped '{name}'" if unloaded else f"'{name}' was not running")


@cli.command()
@click.option("--limit", default=50, show_default=True)
@click.option("--target", help="Only events about this version.")
@click.option("--since", help="Only newer events: 24h, 30m, 7d or an ISO time.")
@json_option
@pass_ctx
@api
def events(ctx: Context, limit: int, target: str | None, since: str | None, as_json: bool) -> None:
    """List lifecycle events: who did what, when, and how it ended."""
    items = ctx.client.events.list(limit=limit, target=target or None, since=since or None)
    if as_json:
        print_json(items)
        return
    rows = [(str(e["created_at"])[:19], e["actor"], e["action"], e["target"], e["result"]) for e in items]
    print_table(console, ("TIME", "ACTOR", "ACTION", "TARGET", "RESULT"), rows)


@cli.command()
@click.argument("name")
@click.argument("prompt", nargs=-1)
@pass_ctx
@api
def run(ctx: Context, name: str, prompt: tuple[str, ...]) -> None:
    """Chat with a model: a REPL, or one answer for PROMPT (or for standard input when piped)."""
    from superollama.cli.repl import one_shot, repl

    if prompt:
        one_shot(ctx.client, name, " ".join(prompt))
    elif not sys.stdin.isatty():
        one_shot(ctx.client, name, sys.stdin.read())
    else:
        repl(ctx.client, name)
