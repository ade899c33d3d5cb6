"""A replica worker of ``serve --workers N``: the data plane only, everything else proxied to the primary.

Served here, with this process's own key cache, rate limiter (the shared-memory table, or Redis), budgets,
telemetry and usage ledger: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models[/…]`` and the Ollama inference routes (``/api/chat``, ``/api/generate``, ``/api/embed``,
``/api/embeddings``), ``/api/version``, the Anthropic Messages API (``/v1/messages[/count_tokens]``) and
the Responses API (``/v1/responses[/…]``, stored in the shared registry), rerank (``/v1/rerank``,
``/v2/rerank``). Routing reads the snapshot the
primary pushes; a model with no ready instance is started by the primary (``ensure``). Every other
path — the admin API, model management, ``/api/tags`` and ``/api/ps``, ``/metrics``, the UI, unknown
paths — goes to the primary unchanged. Chat grounded in vector stores (``plugins/rag``) is answered here
too, from the home's vector store files the primary indexes.

A replica starts serving only once it holds the primary's first snapshot, so its first answers are the
primary's. Its rows go to the shared registry (SQLite in WAL mode with a busy timeout, or Postgres).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from superollama.control import GATEWAY_HEADER, ControlPlaneClient, RoutingHolder, gateway_id
from superollama.gateway import OpenAIRoutes, Relay, error_middleware
from superollama.gateway.anthropic_routes import AnthropicRoutes
from superollama.gateway.images import image_inputs
from superollama.gateway.listener import ConnectionLimits, make_runner, refuse_oversized
from superollama.gateway.loop import run as run_loop
from superollama.gateway.middleware import AnswerHeaders, RequestMiddleware
from superollama.gateway.ollama_routes import OllamaRoutes
from superollama.gateway.openai_routes import ModelTargets
from superollama.gateway.rerank_routes import RerankRoutes
from superollama.gateway.resilience import Resilience
from superollama.gateway.responses_routes import ResponsesRoutes
from superollama.gateway.shadow import ShadowMirror
from superollama.gateway.translated import Backend
from superollama.plugins import load_plugins, plugin_middlewares
from superollama.plugins.rag import replica_grounding
from superollama.registry import open_registry
from superollama.security import (
    Budgets,
    KeyCache,
    PriceTable,
    RateLimiter,
    Security,
    Sessions,
    resolve_auth,
)
from superollama.settings import Settings
from superollama.telemetry import Telemetry
from superollama.telemetry import configure_logging as configure_telemetry_logging
from superollama.telemetry.windows import WindowReporter
from superollama.workers.context import WorkerContext
from superollama.workers.link import PrimaryLink
from superollama.workers.proxy import PrimaryProxy

__all__ = ["create_replica_app", "serve_replica"]

log = logging.getLogger("superollama.workers")


class _Services:
    """What the primary asks of this replica: render metrics, write the usage ledger."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def render_metrics(self) -> bytes:
        metrics = self._telemetry.metrics
        return metrics.render() if metrics is not None else b""

    async def flush_usage(self) -> int:
        ledger = self._telemetry.usage
        return await ledger.flush() if ledger is not None else 0


async def create_replica_app(settings: Settings, ctx: WorkerContext, link: PrimaryLink) -> web.Application:
    registry = await open_registry(settings.registry_url)
    keys = KeyCache(registry.keys)
    await keys.reload()
    limiter: RateLimiter
    if settings.redis_url:
        from superollama.security.redis_limits import RedisRateLimiter

        limiter = RedisRateLimiter(settings.redis_url, fail_open=settings.ratelimit_fail_open)
    else:
        limiter = ctx.shared_limiter()
    budgets = Budgets(PriceTable.parse(settings.price_table), limiter)
    auth = resolve_auth(settings.auth, settings.host, insecure=settings.insecure)
    sessions = Sessions.of_home(settings.home, settings.ui_session_ttl)  # the playground's /v1 calls
    security = Security(keys, limiter, budgets, auth_required=auth, sessions=sessions)
    telemetry = Telemetry(settings, usage_store=registry.usage)
    await telemetry.start()
    link.services = _Services(telemetry)
    link.on_keys_changed(keys.reload)  # a key created, revoked or rotated through any gateway

    plane: ControlPlaneClient = link  # the replica's control plane is its primary, behind the one seam
    resilience = Resilience.from_settings(settings)
    targets = ModelTargets(plane.holder, plane, plane, security, resilience, images=image_inputs(settings))
    requests = RequestMiddleware(security, telemetry, settings.node_name, refuse_oversized=False)
    proxy = PrimaryProxy(ctx.paths.primary)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            refuse_oversized,
            proxy.middleware(),
            requests.middleware(),
            error_middleware,
            *plugin_middlewares(load_plugins()),  # the request hooks run where the request is routed
        ],
    )
    ctx.add_worker_header(app)
    AnswerHeaders.of(app).fixed[GATEWAY_HEADER] = gateway_id(settings.gateway_name, ctx.master_pid)
    backends = resilience.mounts
    relay = Relay(
        backends,
        settings.upstream_timeout,
        link.credentials,
        first_token_timeout=resilience.first_token_timeout,
    )
    reporter = WindowReporter(telemetry.windows, registry.windows, interval=settings.rollout_report_interval)
    shadow = ShadowMirror(
        targets,
        backends,
        registry.shadows,
        telemetry.windows,
        timeout=settings.upstream_timeout,
        queue=settings.shadow_queue,
        embedding_model=settings.shadow_embedding_model,
    )
    openai_routes = OpenAIRoutes(link.holder, targets, relay, shadow=shadow)
    openai_routes.register(app)
    OllamaRoutes(
        targets,
        None,
        link,
        backends,
        settings.upstream_timeout,
        credentials=link.credentials,
        first_token_timeout=resilience.first_token_timeout,
        shadow=openai_routes.shadow,
    ).register(app, management=False)
    translated = Backend(
        backends,
        settings.upstream_timeout,
        link.credentials,
        first_token_timeout=resilience.first_token_timeout,
    )
    AnthropicRoutes(targets, translated, shadow=openai_routes.shadow).register(app)
    rag, rag_reload = await replica_grounding(
        registry,
        targets,
        translated,
        home=settings.home,
        embedding_model=settings.rag_embedding_model,
        engine=settings.rag_vector_store,
        poll=settings.change_poll,
    )
    ResponsesRoutes(
        targets,
        translated,
        registry.responses,
        shadow=openai_routes.shadow,
        file_search=rag.file_search,
    ).register(app)
    RerankRoutes(targets, translated).register(app)
    openai_routes.grounded = rag.grounding
    proxy.register(app)
    upkeep = asyncio.create_task(keys.upkeep(registry.keys), name="key-upkeep")
    reporter.start()
    shadow.start()

    async def close(_app: web.Application) -> None:
        await shadow.close()
        await reporter.close()
        for task in (upkeep, rag_reload):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        rag.close()
        await registry.keys.touch(keys.drain_used())
        await requests.close()
        await link.close()
        await limiter.close()
        await telemetry.close()  # writes the usage ledger
        await resilience.close()
        await proxy.close()
        await registry.close()

    app.on_cleanup.append(close)
    return app


async def _serve(settings: Settings, ctx: WorkerContext) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    link = PrimaryLink(ctx, RoutingHolder(), load_timeout=settings.load_timeout)
    await link.start()
    ready = asyncio.create_task(link.wait_ready())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait((ready, stopping), return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if stop.is_set():
        await link.close()
        return
    app = await create_replica_app(settings, ctx, link)
    limits = ConnectionLimits.from_settings(settings)
    runner = make_runner(app, limits)
    await runner.setup()
    try:
        await ctx.start_sites(runner, limits)
        await stopping
        log.info("worker %d shutting down", ctx.index)
    finally:
        await runner.cleanup()


def serve_replica(settings: Settings, ctx: WorkerContext) -> None:
    """A replica worker's main (in the forked process)."""
    logging_handle = configure_telemetry_logging(settings)
    try:
        run_loop(_serve(settings, ctx))
    finally:
        logging_handle.close()
