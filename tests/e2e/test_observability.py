"""Metrics, access log, usage ledger and OTLP traces of a running server, for real requests on the real
SmolLM2 (the OTLP receiver is a local aiohttp server decoding the protobuf payload)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from openai import OpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.conftest import ServerProcess, wait_until

MODEL = "smollm2:135m"


class Receiver:
    """An OTLP/HTTP trace receiver on loopback, in a thread."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                self.spans.extend(ss.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_metrics_logs_usage_and_traces(tmp_path: Path, receiver: Receiver) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(
        home,
        SUPEROLLAMA_OTLP_ENDPOINT=receiver.url,
        SUPEROLLAMA_LOG_JSON="true",
        SUPEROLLAMA_USAGE_FLUSH_SECONDS="0.2",
    ).start()
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        secret_prompt = "The password is swordfish"
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": secret_prompt}],
            max_tokens=5,
            extra_headers={"X-Request-Id": "req-observed-1"},
        )
        assert raw.headers["X-Request-Id"] == "req-observed-1"
        answer = raw.parse()
        assert answer.usage is not None
        chunks = list(
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True
            )
        )
        assert all(c.usage is None for c in chunks)  # metering asked for usage; this client did not
        client.embeddings.create(model=MODEL, input=["a", "b"])
        assert (
            httpx.post(
                server.url + "/v1/chat/completions",
                json={"model": "nope:1", "messages": [{"role": "user", "content": "x"}]},
            ).status_code
            == 404
        )

        # /metrics, in Prometheus' text format (a stream is recorded just after its last byte went out)
        def metrics() -> dict[str, Any]:
            return {
                f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)
            }

        def served_ok() -> float:
            samples = metrics()["superollama_requests"].samples
            return sum(
                s.value
                for s in samples
                if s.labels.get("model") == MODEL
                and s.labels.get("status") == "200"
                and s.name.endswith("_total")
            )

        assert wait_until(lambda: served_ok() == 3, timeout=10), served_ok()
        families = metrics()
        tokens = {
            s.labels["type"]: s.value
            for s in families["superollama_tokens"].samples
            if s.labels.get("model") == MODEL and s.name.endswith("_total")
        }
        assert (
            tokens["input"] >= answer.usage.prompt_tokens and tokens["output"] >= 10
        )  # stream usage counted too
        ttft = [
            s
            for s in families["superollama_time_to_first_token_seconds"].samples
            if s.name.endswith("_count")
        ]
        assert sum(s.value for s in ttft) >= 2
        assert any(
            s.labels.get("state") == "ready" and s.value == 1
            for s in families["superollama_instances"].samples
        )

        # the usage ledger, through the CLI
        def ledger() -> list[dict[str, object]]:
            done = server.cli("usage", "--by", "model", "--json")
            return json.loads(done.stdout) if done.returncode == 0 else []

        assert wait_until(
            lambda: any(r.get("requests") == 3 for r in ledger() if r.get("group") == MODEL), timeout=15
        )
        row = next(r for r in ledger() if r.get("group") == MODEL)
        assert row["prompt_tokens"] >= answer.usage.prompt_tokens  # type: ignore[operator]

        # traces: one root span per request with the GenAI attributes
        def roots() -> list[Span]:
            return [s for s in receiver.spans if not s.parent_span_id]

        assert wait_until(lambda: len(roots()) >= 4, timeout=45)
        chat_span = next(
            s
            for s in roots()
            if _attrs(s).get("gen_ai.operation.name") == "chat"
            and _attrs(s).get("gen_ai.usage.input_tokens") == answer.usage.prompt_tokens
        )
        attrs = _attrs(chat_span)
        assert attrs["gen_ai.request.model"] == MODEL
        assert attrs["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
        children = [s for s in receiver.spans if s.parent_span_id == chat_span.span_id]
        assert {"upstream"} <= {s.name.split()[0] for s in children}
    finally:
        server.stop()

    # one JSON access line per request, no prompt text (capture is off)
    lines = [
        json.loads(line) for line in (home / "serve.log").read_text().splitlines() if line.startswith("{")
    ]
    access = [line for line in lines if line.get("logger") == "superollama.access"]
    assert len(access) >= 4
    first = next(line for line in access if line.get("request_id") == "req-observed-1")
    assert first["model"] == MODEL and first["status"] == 200
    assert "swordfish" not in (home / "serve.log").read_text()


def _attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = value.string_value or value.int_value or value.double_value or value.bool_value
    return out
