"""Traces over real OTLP/HTTP: a local aiohttp receiver (port 0) accepts ``POST /v1/traces`` as an
OpenTelemetry collector would, decodes the protobuf body with ``opentelemetry-proto`` and checks span
names, parent/child ids, GenAI attributes, kinds, statuses and timestamps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from superollama.core import RequestRecord
from superollama.settings import Settings
from superollama.telemetry import Telemetry
from superollama.telemetry.tracing import parse_headers, trace_id_of, traces_url

T0 = 1_767_225_600.123456  # 2026-01-01T00:00:00.123456Z
NS = 1_000_000_000


@dataclass
class Collector:
    url: str = ""
    spans: list[Span] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    headers: list[Mapping[str, str]] = field(default_factory=list)


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    col = Collector()

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        col.headers.append(request.headers.copy())  # case-insensitive
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for rs in message.resource_spans:
            col.resources.append({kv.key: _value(kv.value) for kv in rs.resource.attributes})
            for ss in rs.scope_spans:
                col.spans.extend(ss.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    col.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield col
    await runner.cleanup()


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value"))


def attrs(span: Span) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in span.attributes}


def record(**changes: Any) -> RequestRecord:
    values: dict[str, Any] = {
        "request_id": "0123456789abcdef0123456789abcdef",
        "protocol": "openai",
        "operation": "chat",
        "model": "smollm2:135m",
        "status": 200,
        "started_at": T0,
        "duration": 2.0,
        "stream": True,
        "key_prefix": "so-ab12cd34",
        "version": "smollm2:135m",
        "instance": "i-1",
        "node": "local",
        "ttft": 0.75,
        "load_wait": 0.5,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "input": [{"role": "user", "content": "Why is the sky blue?"}],
        "output": "Rayleigh scattering.",
    }
    values.update(changes)
    return RequestRecord(**values)


async def export(collector: Collector, *records: RequestRecord, **settings: Any) -> list[Span]:
    telemetry = Telemetry(
        Settings(
            otlp_endpoint=collector.url, otlp_headers="x-tenant=t1,authorization=Bearer%20abc", **settings
        )
    )
    await telemetry.start()
    for r in records:
        telemetry.record(r)
    await telemetry.close()  # flushes the BatchSpanProcessor: the spans are at the receiver now
    return collector.spans


async def test_request_spans_over_otlp_http(collector: Collector) -> None:
    spans = await export(collector, record(), host="127.0.0.1", port=11435)
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"chat smollm2:135m", "routing", "load_wait", "upstream"}
    root = by_name["chat smollm2:135m"]
    trace_id = root.trace_id
    assert trace_id == trace_id_of("0123456789abcdef0123456789abcdef").to_bytes(16, "big")
    assert all(s.trace_id == trace_id for s in spans)
    assert root.parent_span_id == b""
    for child in ("routing", "load_wait", "upstream"):
        assert by_name[child].parent_span_id == root.span_id
    assert len({s.span_id for s in spans}) == 4

    assert root.kind == Span.SPAN_KIND_SERVER
    assert by_name["upstream"].kind == Span.SPAN_KIND_CLIENT
    assert by_name["routing"].kind == Span.SPAN_KIND_INTERNAL

    start, end = int(T0 * NS), int((T0 + 2.0) * NS)
    assert abs(root.start_time_unix_nano - start) < 1000 and abs(root.end_time_unix_nano - end) < 1000
    wait, up = by_name["load_wait"], by_name["upstream"]
    assert wait.start_time_unix_nano == root.start_time_unix_nano
    assert wait.end_time_unix_nano == up.start_time_unix_nano == root.start_time_unix_nano + NS // 2
    assert up.end_time_unix_nano == root.end_time_unix_nano
    (first_token,) = up.events
    assert first_token.name == "gen_ai.first_token"
    assert first_token.time_unix_nano == root.start_time_unix_nano + int(0.75 * NS)

    a = attrs(root)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "superollama" and a["gen_ai.system"] == "superollama"
    assert a["gen_ai.request.model"] == "smollm2:135m" and a["gen_ai.response.model"] == "smollm2:135m"
    assert a["gen_ai.usage.input_tokens"] == 12 and a["gen_ai.usage.output_tokens"] == 34
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == 11435
    assert a["http.response.status_code"] == 200
    assert a["superollama.request_id"] == "0123456789abcdef0123456789abcdef"
    assert "error.type" not in a
    assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a  # capture is off
    assert root.status.code == Status.STATUS_CODE_UNSET
    assert attrs(up)["superollama.instance"] == "i-1"

    (resource,) = collector.resources[:1]
    assert resource["service.name"] == "superollama" and resource["service.instance.id"] == "local"
    assert collector.headers[0]["x-tenant"] == "t1"
    assert collector.headers[0]["authorization"] == "Bearer abc"


async def test_errors_and_captured_content(collector: Collector) -> None:
    failed = record(
        request_id="req-2",
        status=502,
        error_type="upstream_error",
        error="backend died",
        load_wait=None,
        instance=None,
        connection="remote-ollama",
        operation="completion",
    )
    refused = record(
        request_id="req-3",
        status=404,
        error_type="model_not_found",
        version=None,
        instance=None,
        load_wait=None,
    )
    spans = await export(collector, failed, refused, capture_content=True)
    roots = {attrs(s)["superollama.request_id"]: s for s in spans if not s.parent_span_id}
    root = roots["req-2"]
    assert root.name == "text_completion smollm2:135m"
    a = attrs(root)
    assert a["error.type"] == "upstream_error" and a["gen_ai.operation.name"] == "text_completion"
    assert root.status.code == Status.STATUS_CODE_ERROR and root.status.message == "backend died"
    assert orjson.loads(a["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Why is the sky blue?"}]}
    ]
    assert orjson.loads(a["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Rayleigh scattering."}]}
    ]
    children = {s.name: s for s in spans if s.parent_span_id == root.span_id}
    assert set(children) == {"routing", "upstream"}  # no load wait
    assert attrs(children["upstream"])["gen_ai.provider.name"] == "remote-ollama"
    assert children["upstream"].status.code == Status.STATUS_CODE_ERROR

    not_found = roots["req-3"]
    assert attrs(not_found)["error.type"] == "model_not_found"
    assert not_found.status.code == Status.STATUS_CODE_UNSET  # a client error is not a server failure
    assert {s.name for s in spans if s.parent_span_id == not_found.span_id} == {"routing"}


def test_endpoint_and_header_parsing() -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces/") == "http://c:4318/v1/traces"
    assert parse_headers("a=1, b = x%3Dy ,junk,=v") == {"a": "1", "b": "x=y"}
    assert parse_headers(None) == {}
    assert trace_id_of("not-a-uuid") == trace_id_of("not-a-uuid") != trace_id_of("other")


async def test_sampling_keeps_failures(collector: Collector) -> None:
    records = [record(request_id=f"ok-{i}") for i in range(20)]
    records.append(record(request_id="bad", status=500, error_type="upstream_error", error="boom"))
    spans = await export(collector, *records, otlp_sample_ratio=0.0)
    roots = [attrs(s)["superollama.request_id"] for s in spans if not s.parent_span_id]
    assert roots == ["bad"]
