"""RAG: OpenAI's files and vector stores, chunking and ingest jobs, the ``VectorStore`` seam (sqlite-vec,
LanceDB), grounded chat and the Responses API's ``file_search`` tool. ``install`` adds it all to an app;
heavy imports (pypdf, lancedb) happen when used."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from superollama.control import JobManager
from superollama.errors import SuperOllamaError, UpstreamError
from superollama.gateway.openai_routes import ModelTargets
from superollama.gateway.translated import Backend
from superollama.plugins.rag.admin import GroundingRoutes
from superollama.plugins.rag.file_search import FileSearcher
from superollama.plugins.rag.files import FileService
from superollama.plugins.rag.grounding import Grounding
from superollama.plugins.rag.routes import RagRoutes
from superollama.plugins.rag.service import Embed, VectorStores
from superollama.plugins.rag.vectors import Chunk, Hit, VectorStore
from superollama.registry import Registry
from superollama.registry._watch import SqliteWatch

__all__ = [
    "Chunk",
    "FileSearcher",
    "Grounding",
    "Hit",
    "Rag",
    "VectorStore",
    "VectorStores",
    "embedder",
    "install",
    "replica_grounding",
]


log = logging.getLogger("superollama.rag")


def embedder(targets: ModelTargets, backend: Backend) -> Embed:
    """Embeddings through a routable model of ours (or a connection's), like a client's request would
    get them: route → a ready instance (started if need be) → ``/v1/embeddings``; vectors in input order."""

    async def embed(model: str, texts: Sequence[str]) -> list[list[float]]:
        route = targets.route(None, model)
        async with targets.hold(route) as lease:
            body = {"model": lease.endpoint.served_name, "input": list(texts)}
            answer = await backend.up.post(lease, "/v1/embeddings", body)
        data = answer.get("data")
        if not isinstance(data, list) or len(data) != len(texts):
            raise UpstreamError(f"{model} answered {len(data or [])} embeddings for {len(texts)} texts")
        ordered = sorted(data, key=lambda d: int(d.get("index", 0)))
        return [[float(x) for x in d["embedding"]] for d in ordered]

    return embed


class Rag:
    """What ``install`` built (the app factory keeps it to reload and close)."""

    def __init__(self, stores: VectorStores, grounding: Grounding) -> None:
        self.files = stores.files
        self.stores = stores
        self.grounding = grounding
        self.file_search = FileSearcher(stores)  # the Responses API's file_search tool

    async def reload(self) -> None:
        await self.grounding.reload()

    def close(self) -> None:
        self.stores.close()


async def install(
    app: web.Application,
    registry: Registry,
    jobs: JobManager,
    targets: ModelTargets,
    backend: Backend,
    *,
    home: Path,
    embedding_model: str,
    engine: str,
) -> Rag:
    files = FileService(registry.rag, home / "files")
    if registry.dialect == "sqlite":  # one gateway: what it left unfinished has no job any more
        await registry.rag.fail_unfinished("the server stopped before this file was indexed; add it again")

    def check_model(_key: str | None, model: str) -> None:
        targets.route(None, model)  # a 404 naming the model when it is not routable

    stores = VectorStores(
        files,
        jobs,
        embedder(targets, backend),
        home / "vectors",
        default_model=embedding_model,
        default_engine=engine,
        check_model=check_model,
    )
    grounding = Grounding(stores, targets, backend)
    await grounding.reload()
    RagRoutes(files, stores).register(app)
    GroundingRoutes(grounding).register(app)
    return Rag(stores, grounding)


def _generation(watch: SqliteWatch | None) -> object | None:
    """The registry's ``all`` generation by the watch's probe (no query through the engine); None when
    there is no watch or it failed (then the replica reloads every poll, as without one)."""
    if watch is None:
        return None
    try:
        return watch.probe(["generations"])["generations"]
    except sqlite3.Error:
        return None


async def replica_grounding(
    registry: Registry,
    targets: ModelTargets,
    backend: Backend,
    *,
    home: Path,
    embedding_model: str,
    engine: str,
    poll: float,
) -> tuple[Rag, asyncio.Task[None]]:
    """Grounded chat in a replica worker of ``serve --workers N``: the same retrieval over the same files
    of the home (the primary indexes them; files and vector store routes go to it), its groundings read
    from the shared registry every ``poll`` seconds by a task of its own (never on a request)."""
    files = FileService(registry.rag, home / "files")
    stores = VectorStores(
        files,
        None,
        embedder(targets, backend),
        home / "vectors",
        default_model=embedding_model,
        default_engine=engine,
    )
    grounding = Grounding(stores, targets, backend)
    watch = registry.watch  # SQLite: reload only when a generation moved (groundings bump one)
    seen = _generation(watch)  # before the load: a change meanwhile is newer
    await grounding.reload()

    async def reload_forever() -> None:
        nonlocal seen
        while True:
            await asyncio.sleep(poll)
            now = _generation(watch)
            if now is not None and now == seen:
                continue
            try:
                await grounding.reload()
            except SuperOllamaError as exc:  # the registry is away: keep the last groundings
                log.warning("could not reload groundings: %s", exc.message)
            else:
                seen = now

    return Rag(stores, grounding), asyncio.create_task(reload_forever(), name="grounding-reload")
