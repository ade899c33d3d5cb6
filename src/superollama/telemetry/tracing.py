"""OpenTelemetry spans per request, built after the request from its ``RequestRecord``, exported over
OTLP/HTTP (protobuf) by a ``BatchSpanProcessor``.

No span object lives on the request path: ``OtlpTracing`` is a sink of the telemetry thread and creates
the spans with the record's own timestamps::

    chat smollm2:135m   SERVER  gen_ai.* (GenAI semantic conventions), server.*, error.type
    ├── routing         INTERNAL
    ├── load_wait       INTERNAL   (when the request waited for its model to load)
    └── upstream        CLIENT     the backend call; event ``gen_ai.first_token`` at TTFT

``RequestRecord`` has no upstream start time yet, so ``routing`` is an instant at the start and
``upstream`` starts when the load wait ends. The trace id is derived from the request id
(``trace_id_of``), so the access line's ``trace_id`` finds the trace. ``sample_ratio`` keeps that share of
the traces (by trace id; failures always): the SDK costs ~0.25 ms of CPU per request (4 spans) in the
telemetry thread. The OpenTelemetry SDK is imported
when an ``OtlpTracing`` is built, never by ``import superollama.telemetry``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from superollama.core import RequestRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["OPERATIONS", "PROVIDER", "OtlpTracing", "parse_headers", "trace_id_of", "traces_url"]

PROVIDER = "superollama"
# RequestRecord.operation → gen_ai.operation.name
OPERATIONS: Mapping[str, str] = {
    "chat": "chat",
    "completion": "text_completion",
    "completions": "text_completion",
    "generate": "text_completion",
    "embeddings": "embeddings",
    "embed": "embeddings",
}
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_ID64 = 1 << 64


def trace_id_of(request_id: str) -> int:
    """The 128-bit trace id of a request: its id itself when that is a UUID/32 hex digits, else a hash."""
    plain = request_id.replace("-", "")
    if _HEX32.match(plain) and int(plain, 16):
        return int(plain, 16)
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=16).digest(), "big") or 1


def trace_id_hex(request_id: str) -> str:
    return f"{trace_id_of(request_id):032x}"


def parse_headers(text: str | None) -> dict[str, str]:
    """``k1=v1,k2=v2`` (the ``OTEL_EXPORTER_OTLP_HEADERS`` form, values URL-encoded) → a dict."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(value.strip())
    return out


def traces_url(endpoint: str) -> str:
    """``http://host:4318`` → ``http://host:4318/v1/traces``; a URL already ending so is kept."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append({"type": "text", "content": part.get("text", "")})
            else:
                parts.append({"type": "json", "content": part})
        return parts
    return [] if content is None else [{"type": "json", "content": content}]


def _message(m: Any) -> dict[str, Any]:
    if not isinstance(m, dict):
        return {"role": "user", "parts": _parts(m)}
    parts = _parts(m.get("content"))
    for call in m.get("tool_calls") or ():
        fn = call.get("function", {}) if isinstance(call, dict) else {}
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": fn.get("name"),
                "arguments": fn.get("arguments"),
            }
        )
    if m.get("role") == "tool":
        parts = [{"type": "tool_call_response", "id": m.get("tool_call_id"), "result": m.get("content")}]
    return {"role": m.get("role", "user"), "parts": parts}


def input_messages(value: Any) -> str:
    """Captured input as ``gen_ai.input.messages`` (JSON): chat messages, or a prompt as one user message."""
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        value = value["messages"]
    messages = [_message(m) for m in value] if isinstance(value, list) else [_message(value)]
    return orjson.dumps(messages, default=str).decode()


def output_messages(value: Any) -> str:
    """Captured output as ``gen_ai.output.messages`` (JSON): the answer as one assistant message."""
    return orjson.dumps([{"role": "assistant", "parts": _parts(value)}], default=str).decode()


class OtlpTracing:
    """A telemetry-thread sink: spans for each record, batched to ``endpoint`` (or to ``exporter``)."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        node: str = "local",
        server_address: str | None = None,
        server_port: int | None = None,
        capture: bool = False,
        exporter: SpanExporter | None = None,
        sample_ratio: float = 1.0,
        schedule_delay_ms: int = 1000,
        max_queue_size: int = 8192,
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        from superollama import __version__

        if exporter is None:
            if not endpoint:
                raise ValueError("OtlpTracing needs an endpoint or an exporter")
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(
                endpoint=traces_url(endpoint), headers=dict(headers or {}), timeout=10
            )

        class _Ids(RandomIdGenerator):
            """The next root span's trace id is the request's (set just before it starts)."""

            next_trace_id = 0

            def generate_trace_id(self) -> int:
                return self.next_trace_id or super().generate_trace_id()

        self._ids = _Ids()
        resource = Resource.create(
            {"service.name": "superollama", "service.version": __version__, "service.instance.id": node}
        )
        self._provider: TracerProvider = TracerProvider(resource=resource, id_generator=self._ids)
        self._provider.add_span_processor(
            BatchSpanProcessor(
                exporter, max_queue_size=max_queue_size, schedule_delay_millis=schedule_delay_ms
            )
        )
        self._tracer = self._provider.get_tracer("superollama.telemetry", __version__)
        self._server: dict[str, Any] = {}
        if server_address:
            self._server["server.address"] = server_address
            if server_port:
                self._server["server.port"] = server_port
        self._capture = capture
        # Keep a trace when the low 64 bits of its id fall under the ratio (as TraceIdRatioBased does).
        self._sample_bound = round(max(0.0, min(1.0, sample_ratio)) * _ID64)

    def __call__(self, r: RequestRecord) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        failed = r.status >= 500
        trace_id = trace_id_of(r.request_id)
        if not failed and (trace_id & (_ID64 - 1)) >= self._sample_bound:
            return  # sampled out (a failure is always kept)
        operation = OPERATIONS.get(r.operation, r.operation)
        start, end = _ns(r.started_at), _ns(r.started_at + r.duration)
        error_type = r.error_type or (f"http_{r.status}" if r.status >= 400 else None)
        self._ids.next_trace_id = trace_id
        try:
            root = self._tracer.start_span(
                f"{operation} {r.model}",
                kind=SpanKind.SERVER,
                start_time=start,
                attributes=self._root(r, operation),
            )
        finally:
            self._ids.next_trace_id = 0
        if error_type is not None:
            root.set_attribute("error.type", error_type)
        if failed:
            root.set_status(Status(StatusCode.ERROR, r.error or error_type))
        ctx = trace.set_span_in_context(root)
        self._tracer.start_span("routing", ctx, start_time=start).end(end_time=start)
        upstream_at = start
        if r.load_wait:
            upstream_at = min(end, start + _ns(r.load_wait))
            wait = self._tracer.start_span("load_wait", ctx, start_time=start)
            wait.end(end_time=upstream_at)
        if r.instance is not None or r.connection is not None:
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": r.connection or PROVIDER,
                "gen_ai.request.model": r.version or r.model,
            }
            for key, value in (
                ("superollama.instance", r.instance),
                ("superollama.connection", r.connection),
            ):
                if value is not None:
                    attrs[key] = value
            up = self._tracer.start_span(
                "upstream", ctx, kind=SpanKind.CLIENT, start_time=upstream_at, attributes=attrs
            )
            if r.ttft is not None:
                up.add_event("gen_ai.first_token", timestamp=min(end, start + _ns(r.ttft)))
            if error_type is not None:
                up.set_attribute("error.type", error_type)
            if failed:
                up.set_status(Status(StatusCode.ERROR, r.error or error_type))
            up.end(end_time=end)
        root.end(end_time=end)

    def _root(self, r: RequestRecord, operation: str) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.system": PROVIDER,  # older conventions (and Opik's OTLP mapping) read this one
            "gen_ai.request.model": r.model,
            "gen_ai.response.model": r.version or r.model,
            **self._server,
            "http.response.status_code": r.status,
            "superollama.request_id": r.request_id,
            "superollama.protocol": r.protocol,
            "superollama.stream": r.stream,
        }
        optional = (
            ("gen_ai.usage.input_tokens", r.prompt_tokens),
            ("gen_ai.usage.output_tokens", r.completion_tokens),
            ("superollama.version", r.version),
            ("superollama.instance", r.instance),
            ("superollama.connection", r.connection),
            ("superollama.node", r.node),
            ("superollama.key_prefix", r.key_prefix),
            ("superollama.cost", r.cost),
            ("superollama.ttft", r.ttft),
            ("superollama.load_wait", r.load_wait),
        )
        for key, value in optional:
            if value is not None:
                attrs[key] = value
        if self._capture:
            if r.input is not None:
                attrs["gen_ai.input.messages"] = input_messages(r.input)
            if r.output is not None:
                attrs["gen_ai.output.messages"] = output_messages(r.output)
        return attrs

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export what is batched now (blocking)."""
        return self._provider.force_flush(int(timeout_s * 1000))

    def close(self) -> None:
        """Export what is batched and stop (blocking: call it in a thread)."""
        self._provider.shutdown()
