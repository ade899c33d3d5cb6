"""``Telemetry``: the one object the gateway, the agent and the app factory talk to.

    telemetry = Telemetry(settings, usage_store=registry.usage)
    await telemetry.start()
    app.router.add_get("/metrics", telemetry.metrics_handler)
    ...                                    # per request, when it ends:
    telemetry.record(record)               # sync, never blocks, never raises for a full queue
    ...
    await telemetry.close()                # flushes the ledger, logs, spans, Opik, webhooks

``record`` updates the Prometheus metrics in place (a few increments) and queues the record twice: for
the telemetry thread (access log, OTLP spans, Opik) and for the usage ledger's writer task. A 429 also
feeds the rate-limit storm detector.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from superollama.core import EventRecord, RequestRecord
from superollama.settings import Settings
from superollama.telemetry._prom import CONTENT_TYPE
from superollama.telemetry._sink import SinkThread
from superollama.telemetry.access_log import AccessLog
from superollama.telemetry.events import Incidents
from superollama.telemetry.metrics import Metrics
from superollama.telemetry.usage import UsageLedger, UsageStore
from superollama.telemetry.windows import TargetWindows

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web
    from opentelemetry.sdk.trace.export import SpanExporter

    from superollama.telemetry.opik import OpikExporter
    from superollama.telemetry.tracing import OtlpTracing

__all__ = ["Telemetry"]

log = logging.getLogger("superollama.telemetry")
_RATE_LIMIT_TYPES = frozenset({None, "rate_limited", "rate_limit_exceeded"})


def _secret(value: object) -> str | None:
    get = getattr(value, "get_secret_value", None)
    return str(get()) if callable(get) else None


class Telemetry:
    """Metrics, access log, traces, Opik, usage ledger and incidents of one app, built from settings.

    ``usage_store``: where ledger rows go (``registry.usage``); ``None``: no ledger. ``span_exporter``
    replaces the OTLP/HTTP exporter (tests); ``session`` is the HTTP session webhooks use (default: own).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        usage_store: UsageStore | None = None,
        span_exporter: SpanExporter | None = None,
        session: aiohttp.ClientSession | None = None,
        queue_size: int = 10_000,
    ) -> None:
        self.settings = settings
        self.capture_content = settings.capture_content
        self.metrics: Metrics | None = Metrics() if settings.metrics else None
        self.windows = TargetWindows(settings.rollout_window)  # per deployment target: canary analysis
        self._span_exporter = span_exporter
        trace_ids = None
        if settings.otlp_endpoint or span_exporter is not None:
            from superollama.telemetry.tracing import trace_id_hex

            trace_ids = trace_id_hex
        self.access_log = AccessLog(capture=self.capture_content, trace_id=trace_ids)
        self.sinks = SinkThread([self.access_log], maxsize=queue_size, on_drop=self._dropped("sinks"))
        self.usage: UsageLedger | None = None
        if usage_store is not None:
            self.usage = UsageLedger(
                usage_store,
                flush_rows=settings.usage_flush_rows,
                flush_seconds=settings.usage_flush_seconds,
                on_drop=self._dropped_n("usage"),
            )
        self.incidents = Incidents(
            _secret(settings.events_webhook),
            node=settings.node_name,
            session=session,
            on_drop=self._dropped("webhook"),
        )
        self.tracing: OtlpTracing | None = None
        self.opik: OpikExporter | None = None
        self._started = False
        self._closed = False

    def _dropped(self, sink: str) -> Callable[[], None]:
        def dropped() -> None:
            if self.metrics is not None:
                self.metrics.drop(sink)

        return dropped

    def _dropped_n(self, sink: str) -> Callable[[int], None]:
        def dropped(count: int) -> None:
            if self.metrics is not None:
                self.metrics.drop(sink, count)

        return dropped

    # -- the request path ---------------------------------------------------------------------------
    def record(self, record: RequestRecord) -> None:
        """One finished request (sync, non-blocking; call it from the event loop's thread)."""
        if self.metrics is not None:
            self.metrics.observe(record)
        if record.deployment is not None:
            self.windows.record(record)
        if not self.capture_content and (record.input is not None or record.output is not None):
            record = dataclasses.replace(record, input=None, output=None)
        if self.sinks.wanted:  # no thread hop when nothing would use it
            self.sinks.put(record)
        if self.usage is not None and (
            record.key_id is not None or record.version is not None or record.connection is not None
        ):
            self.usage.add(record)
        if record.status == 429 and record.error_type in _RATE_LIMIT_TYPES:
            self.incidents.rate_limited(record.key_prefix, model=record.model)

    def inflight(self, delta: int) -> None:
        """+1 when a request starts being served, -1 when it ends."""
        if self.metrics is not None:
            self.metrics.inflight(delta)

    def queued(self, delta: int) -> None:
        """+1 when a request starts waiting for its model to load, -1 when the wait ends."""
        if self.metrics is not None:
            self.metrics.queued(delta)

    def upstream_error(self, model: str, kind: str) -> None:
        """A backend failure that a retry hid (the failures a request ends with are counted by ``record``)."""
        if self.metrics is not None:
            self.metrics.upstream_error(model, kind)

    def instance_event(
        self, instance: str, version: str, state: str, *, node: str = "", load_seconds: float | None = None
    ) -> None:
        """An instance changed state (``InstanceState``); ``load_seconds`` with ``ready``."""
        if self.metrics is not None:
            self.metrics.instance_event(instance, version, state, node=node, load_seconds=load_seconds)

    def instance_tokens_per_second(self, instance: str) -> float | None:
        """Tokens per second of the instance's latest answer, when metrics are on."""
        return self.metrics.instance_tokens_per_second(instance) if self.metrics is not None else None

    def notify(self, event: EventRecord) -> None:
        """A lifecycle event: a log line; an incident also goes to the webhook."""
        self.incidents.notify(event)

    async def metrics_handler(self, request: web.Request) -> web.Response:
        """``GET /metrics``: the Prometheus text exposition."""
        from aiohttp import web

        if self.metrics is None:
            raise web.HTTPNotFound(text="metrics are off (SUPEROLLAMA_METRICS=false)")
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Build the exporters that are on (their SDKs are imported in a thread) and start the workers."""
        if self._started:
            return
        self._started = True
        s = self.settings
        if s.otlp_endpoint or self._span_exporter is not None:
            from superollama.telemetry.tracing import OtlpTracing, parse_headers

            try:
                self.tracing = await asyncio.to_thread(
                    OtlpTracing,
                    s.otlp_endpoint,
                    headers=parse_headers(_secret(s.otlp_headers)),
                    node=s.node_name,
                    server_address=s.host,
                    server_port=s.port,
                    capture=self.capture_content,
                    exporter=self._span_exporter,
                    sample_ratio=s.otlp_sample_ratio,
                )
            except ImportError as exc:
                log.error("otlp_endpoint is set, but OpenTelemetry is missing (%s): no traces", exc)
            else:
                self.sinks.add(self.tracing)
        if s.opik_enabled:
            from superollama.telemetry.opik import OpikExporter

            try:
                self.opik = await asyncio.to_thread(
                    OpikExporter.create,
                    project=s.opik_project,
                    workspace=s.opik_workspace,
                    api_key=_secret(s.opik_api_key),
                    url=s.opik_url,
                    capture=self.capture_content,
                )
            except ImportError:
                log.error("opik_enabled, but the Opik SDK is not installed: pip install 'superollama[opik]'")
            else:
                self.sinks.add(self.opik)
        self.sinks.start()
        if self.usage is not None:
            await self.usage.start()
        await self.incidents.start()

    async def flush(self) -> None:
        """Push everything queued so far through every sink and exporter (tests, admin)."""
        self.sinks.hand_over()
        await asyncio.to_thread(self._flush_threads)
        if self.usage is not None:
            await self.usage.flush()

    def _flush_threads(self) -> None:
        self.sinks.flush()
        if self.tracing is not None:
            self.tracing.flush()
        if self.opik is not None:
            self.opik.flush()

    async def close(self) -> None:
        """Write the ledger, drain the telemetry thread, flush spans and Opik, send queued webhooks.
        Call it after the server stopped taking requests and before the registry closes. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.sinks.hand_over()
        results = await asyncio.gather(
            self.usage.close() if self.usage is not None else asyncio.sleep(0),
            asyncio.to_thread(self._close_threads),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                log.error("closing telemetry failed", exc_info=result)
        await self.incidents.close()

    def _close_threads(self) -> None:
        self.sinks.close()
        if self.tracing is not None:
            self.tracing.close()
        if self.opik is not None:
            self.opik.close()
