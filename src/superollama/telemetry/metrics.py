"""The gateway's Prometheus metrics, fed by one ``RequestRecord`` per finished request.

``Metrics.observe`` is on the request path: one dict lookup for the request's label set (its counters and
histograms are cached together), a few increments and bucket searches, no formatting. Everything is
rendered only when ``/metrics`` is scraped. Update from the event loop's thread only.

The ``model`` label is the canonical name of the model a request was routed to (``sMollm2:135m`` and
``smollm2:135m`` count as ``smollm2:135m``), so only the catalog's models ever become label values. A
request that reached no model — a name no model has, a model outside the key's scope (which the client
sees as missing), a malformed name, a refusal before routing — counts as ``_unknown``; past ``max_models``
distinct models, as ``_other``. No client can create series.

Names (all ``superollama_``-prefixed; the Grafana dashboard in ``deploy/grafana`` uses them):

    requests_total{model,status,protocol}            counter
    request_duration_seconds{model}                 histogram  end to end, as the client saw it
    time_to_first_token_seconds{model}              histogram  first byte of the answer
    tokens_total{model,type=input|output}           counter    prompt / completion tokens
    output_tokens_per_second{model}                 histogram  completion tokens per second of generation
    load_wait_seconds{model}                        histogram  time a request waited for its model to load
    requests_in_flight                              gauge
    load_queue_depth                                gauge      requests waiting for a model to load
    request_errors_total{model,type}                counter    every request that ended in an error
    upstream_errors_total{model,kind}               counter    backend failures (5xx, or seen and retried)
    rate_limit_rejections_total{model,reason}       counter    429s (rate_limit_exceeded, insufficient_quota)
    instances{version,node,state}                   gauge      live instances by state
    instance_load_seconds{version}                  histogram  start of an instance until ready
    instance_failures_total{version}                counter    instances that crashed or failed to load
    telemetry_dropped_total{sink}                   counter    records a full telemetry queue dropped
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from superollama.core import RequestRecord
from superollama.telemetry._prom import (
    Counter,
    CounterChild,
    Gauge,
    Histogram,
    HistogramChild,
    render,
)

__all__ = [
    "LATENCY_BUCKETS",
    "LOAD_BUCKETS",
    "TOKENS_PER_SECOND_BUCKETS",
    "TTFT_BUCKETS",
    "Metrics",
]

P = "superollama_"
# An LLM request takes from milliseconds (cached, embeddings) to minutes (long generations on CPU).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
TOKENS_PER_SECOND_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

UNKNOWN_MODEL = "_unknown"  # a request routed to no model (unknown, out of scope, malformed, refused early)
OTHER_MODEL = "_other"  # past ``max_models`` distinct names
_TERMINAL = frozenset({"stopped", "failed"})
_RATE_LIMIT_TYPES = {"rate_limited": "rate_limit_exceeded", "rate_limit_exceeded": "rate_limit_exceeded"}


class _Cells:
    """The series one (model, status, protocol) updates, looked up once and kept."""

    __slots__ = ("latency", "load_wait", "model", "requests", "tokens_in", "tokens_out", "tps", "ttft")

    def __init__(self, m: Metrics, model: str, status: str, protocol: str) -> None:
        self.model = model
        self.requests: CounterChild = m.requests.labels(model, status, protocol)
        self.latency: HistogramChild = m.latency.labels(model)
        self.ttft: HistogramChild = m.ttft.labels(model)
        self.tokens_in: CounterChild = m.tokens.labels(model, "input")
        self.tokens_out: CounterChild = m.tokens.labels(model, "output")
        self.tps: HistogramChild = m.tokens_per_second.labels(model)
        self.load_wait: HistogramChild = m.load_wait.labels(model)


class Metrics:
    """One per app (no global registry). ``max_models`` bounds the ``model`` label's cardinality."""

    def __init__(self, *, max_models: int = 500) -> None:
        self._max_models = max_models
        self._models: set[str] = set()
        self._cells: dict[tuple[str, int, str], _Cells] = {}
        self._instances: dict[str, tuple[str, str, str]] = {}  # id → (version, node, state)
        self._instance_tps: dict[str, float] = {}  # id → tokens/s of its latest answer with tokens
        self.requests = Counter(P + "requests", "Finished requests.", ("model", "status", "protocol"))
        self.latency = Histogram(
            P + "request_duration_seconds", "Request latency, end to end.", ("model",), LATENCY_BUCKETS
        )
        self.ttft = Histogram(
            P + "time_to_first_token_seconds",
            "Time to the first byte of the answer.",
            ("model",),
            TTFT_BUCKETS,
        )
        self.tokens = Counter(
            P + "tokens", "Prompt (input) and completion (output) tokens.", ("model", "type")
        )
        self.tokens_per_second = Histogram(
            P + "output_tokens_per_second",
            "Completion tokens per second: after the first token when streaming, else over the request.",
            ("model",),
            TOKENS_PER_SECOND_BUCKETS,
        )
        self.load_wait = Histogram(
            P + "load_wait_seconds", "Time a request waited for its model to load.", ("model",), LOAD_BUCKETS
        )
        self.in_flight = Gauge(P + "requests_in_flight", "Requests being served now.")
        self.queue_depth = Gauge(P + "load_queue_depth", "Requests waiting for a model to load.")
        self.errors = Counter(
            P + "request_errors", "Requests that ended in an error, by type.", ("model", "type")
        )
        self.upstream_errors = Counter(
            P + "upstream_errors", "Backend failures by kind (including ones a retry hid).", ("model", "kind")
        )
        self.rate_limited = Counter(
            P + "rate_limit_rejections", "Requests refused with 429, by reason.", ("model", "reason")
        )
        self.instances = Gauge(P + "instances", "Live instances by state.", ("version", "node", "state"))
        self.instance_load = Histogram(
            P + "instance_load_seconds",
            "Time from starting an instance to ready.",
            ("version",),
            LOAD_BUCKETS,
        )
        self.instance_failures = Counter(
            P + "instance_failures", "Instances that crashed or failed to load.", ("version",)
        )
        self.dropped = Counter(
            P + "telemetry_dropped", "Records dropped because a telemetry queue was full.", ("sink",)
        )
        self._in_flight = self.in_flight.labels()
        self._queue_depth = self.queue_depth.labels()
        self._sources: list[Callable[[], Sequence[Counter | Histogram]]] = []

    def add_source(self, source: Callable[[], Sequence[Counter | Histogram]]) -> None:
        """More families, built by ``source`` at each scrape (the gateway's breakers and retry budget)."""
        self._sources.append(source)

    # -- the request path -------------------------------------------------------------------------
    def observe(self, r: RequestRecord) -> None:
        """Count one finished request."""
        model = r.version if r.version in self._models else self._model_label(r.version)
        cells = self._cells.get((model, r.status, r.protocol))
        if cells is None:
            cells = self._cells[(model, r.status, r.protocol)] = _Cells(
                self, model, str(r.status), r.protocol
            )
        cells.requests.value += 1
        cells.latency.observe(r.duration)
        if r.ttft is not None:
            cells.ttft.observe(r.ttft)
        if r.load_wait:
            cells.load_wait.observe(r.load_wait)
        if r.prompt_tokens:
            cells.tokens_in.value += r.prompt_tokens
        out = r.completion_tokens
        if out:
            cells.tokens_out.value += out
            seconds = r.duration
            if r.stream and r.ttft is not None and r.ttft < seconds:
                seconds -= r.ttft
            if seconds > 0:
                cells.tps.observe(out / seconds)
                if r.instance is not None and r.instance in self._instances:
                    self._instance_tps[r.instance] = out / seconds
        if r.error_type is not None or r.status >= 400:
            self._error(cells.model, r)

    def _error(self, model: str, r: RequestRecord) -> None:
        kind = r.error_type or f"http_{r.status}"
        self.errors.labels(model, kind).value += 1
        if r.status == 429:
            self.rate_limited.labels(model, _RATE_LIMIT_TYPES.get(kind, kind)).value += 1
        elif r.status >= 500 and (r.instance is not None or r.connection is not None):
            self.upstream_errors.labels(model, kind).value += 1

    def _model_label(self, version: str | None) -> str:
        """A model seen for the first time: a label of its own once a request was routed to it, named
        canonically (the version's name, never the client's spelling), until ``max_models`` are known."""
        if version is None:
            return UNKNOWN_MODEL
        if len(self._models) >= self._max_models:
            return OTHER_MODEL
        self._models.add(version)
        return version

    def inflight(self, delta: int) -> None:
        self._in_flight.value += delta

    def queued(self, delta: int) -> None:
        self._queue_depth.value += delta

    def upstream_error(self, model: str, kind: str) -> None:
        """A backend failure the request itself did not end with (a retry on another instance hid it)."""
        self.upstream_errors.labels(model if model in self._models else OTHER_MODEL, kind).value += 1

    def drop(self, sink: str, count: int = 1) -> None:
        self.dropped.labels(sink).value += count

    # -- instances (the agent) ----------------------------------------------------------------------
    def instance_event(
        self,
        instance: str,
        version: str,
        state: str,
        *,
        node: str = "",
        load_seconds: float | None = None,
    ) -> None:
        """An instance changed state (``InstanceState`` values). ``load_seconds`` goes with ``ready``;
        ``failed`` counts a failure; ``stopped`` and ``failed`` forget the instance."""
        state = str(state)
        if load_seconds is not None:
            self.instance_load.labels(version).observe(load_seconds)
        if state == "failed":
            self.instance_failures.labels(version).value += 1
        if state in _TERMINAL:
            self._instances.pop(instance, None)
            self._instance_tps.pop(instance, None)
        else:
            self._instances[instance] = (version, node, state)

    def instance_tokens_per_second(self, instance: str) -> float | None:
        """Completion tokens per second of the instance's latest answer (None before its first)."""
        return self._instance_tps.get(instance)

    # -- scrape ---------------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition of every metric."""
        self.instances.clear()
        for key in self._instances.values():
            self.instances.labels(*key).value += 1
        return render(
            (
                self.requests,
                self.latency,
                self.ttft,
                self.tokens,
                self.tokens_per_second,
                self.load_wait,
                self.in_flight,
                self.queue_depth,
                self.errors,
                self.upstream_errors,
                self.rate_limited,
                self.instances,
                self.instance_load,
                self.instance_failures,
                self.dropped,
                *(family for source in self._sources for family in source()),
            )
        )
