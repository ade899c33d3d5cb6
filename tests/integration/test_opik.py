"""Opik through its official Python SDK (``opik``), against a local stand-in of Opik's REST API.

No Opik server can be installed here (it is a Java backend with ClickHouse, MySQL and Redis, shipped as
containers), so a local aiohttp server on port 0 plays its API: it answers the SDK's calls as Opik does
(204 for ``POST /v1/private/traces/batch`` and ``/spans/batch``, 200 otherwise) and records each one. The
test checks what the real SDK sends: a trace per request with input/output (only with capture on), usage
with OpenAI-style keys, latency, errors, and UUIDv7 ids.
"""

from __future__ import annotations

import gzip
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiohttp import web

from superollama.core import RequestRecord
from superollama.settings import Settings
from superollama.telemetry import Telemetry

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
pytestmark = pytest.mark.filterwarnings("ignore:`verify=<str>` is deprecated:DeprecationWarning")  # the SDK's


@dataclass
class OpikStandIn:
    url: str = ""
    calls: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)

    def items(self, kind: str) -> list[dict[str, Any]]:
        path = f"/api/v1/private/{kind}/batch"
        return [item for m, p, _, body in self.calls if m == "POST" and p == path for item in body[kind]]


@pytest.fixture
async def opik_server() -> AsyncIterator[OpikStandIn]:
    standin = OpikStandIn()

    async def any_call(request: web.Request) -> web.Response:
        raw = await request.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        body = orjson.loads(raw) if raw else None
        standin.calls.append((request.method, request.path, dict(request.headers), body))
        if request.method == "POST" and request.path.endswith("/batch"):
            return web.Response(status=204)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_call)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    standin.url = f"http://127.0.0.1:{runner.addresses[0][1]}/api"
    yield standin
    await runner.cleanup()


def record(**changes: Any) -> RequestRecord:
    values: dict[str, Any] = {
        "request_id": "req-1",
        "protocol": "openai",
        "operation": "chat",
        "model": "smollm2:135m",
        "status": 200,
        "started_at": T0,
        "duration": 1.5,
        "version": "smollm2:135m",
        "instance": "i-1",
        "key_prefix": "so-ab12cd34",
        "ttft": 0.25,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "cost": 0.0002,
        "input": [{"role": "user", "content": "Why is the sky blue?"}],
        "output": "Rayleigh scattering.",
    }
    values.update(changes)
    return RequestRecord(**values)


async def run(server: OpikStandIn, *records: RequestRecord, capture: bool) -> None:
    settings = Settings(
        opik_enabled=True,
        opik_url=server.url,
        opik_project="gateway-test",
        opik_workspace="default",
        capture_content=capture,
        metrics=False,
    )
    telemetry = Telemetry(settings)
    await telemetry.start()
    assert telemetry.opik is not None, "the Opik SDK is a test dependency"
    # The SDK sends from its own worker threads; our sink only queues messages for them.
    assert any(t.name.startswith("QueueConsumerThread") for t in threading.enumerate())
    for r in records:
        telemetry.record(r)
    await telemetry.close()  # drains the telemetry thread, then flushes the SDK's batches


async def test_requests_arrive_as_opik_traces(opik_server: OpikStandIn) -> None:
    failed = record(
        request_id="req-2",
        status=502,
        error_type="upstream_error",
        error="backend died",
        completion_tokens=None,
    )
    await run(opik_server, record(), failed, capture=True)

    traces = {t["metadata"]["request_id"]: t for t in opik_server.items("traces")}
    spans = {s["trace_id"]: s for s in opik_server.items("spans")}
    assert set(traces) == {"req-1", "req-2"} and len(spans) == 2
    ok = traces["req-1"]
    assert uuid.UUID(ok["id"]).version == 7
    assert ok["project_name"] == "gateway-test"
    assert ok["name"] == "chat smollm2:135m"
    assert ok["input"] == {"messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    assert ok["output"] == {"output": "Rayleigh scattering."}
    assert datetime.fromisoformat(ok["start_time"]).timestamp() == pytest.approx(T0)
    assert datetime.fromisoformat(ok["end_time"]).timestamp() == pytest.approx(T0 + 1.5)
    assert ok["metadata"]["latency_ms"] == 1500.0 and ok["metadata"]["ttft_ms"] == 250.0
    assert ok["metadata"]["key_prefix"] == "so-ab12cd34" and ok["metadata"]["status"] == 200
    assert "error_info" not in ok or ok["error_info"] is None

    span = spans[ok["id"]]
    assert span["type"] == "llm" and span["model"] == "smollm2:135m" and span["provider"] == "superollama"
    assert span["usage"]["prompt_tokens"] == 12
    assert span["usage"]["completion_tokens"] == 34
    assert span["usage"]["total_tokens"] == 46
    assert span["total_estimated_cost"] == pytest.approx(0.0002)

    bad = traces["req-2"]
    assert bad["error_info"]["exception_type"] == "upstream_error"
    assert bad["error_info"]["message"] == "backend died"
    assert spans[bad["id"]]["usage"]["completion_tokens"] == 0


async def test_content_stays_out_without_capture(opik_server: OpikStandIn) -> None:
    await run(opik_server, record(), capture=False)
    (trace,) = opik_server.items("traces")
    (span,) = opik_server.items("spans")
    for item in (trace, span):
        assert not item.get("input") and not item.get("output")
    sent = orjson.dumps([c[3] for c in opik_server.calls]).decode()
    assert "sky" not in sent and "Rayleigh" not in sent
    assert span["usage"]["total_tokens"] == 46
