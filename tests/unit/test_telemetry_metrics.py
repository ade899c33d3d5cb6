"""Prometheus metrics: the exposition parses back (with prometheus_client's own parser) to exact values."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from superollama.core import RequestRecord
from superollama.settings import Settings
from superollama.telemetry import Metrics, Telemetry
from superollama.telemetry._prom import Histogram, render
from superollama.telemetry.metrics import LATENCY_BUCKETS, OTHER_MODEL, UNKNOWN_MODEL

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def rec(**changes: object) -> RequestRecord:
    base = RequestRecord(
        request_id="r1",
        protocol="openai",
        operation="chat",
        model="smollm2:135m",
        status=200,
        started_at=T0,
        duration=1.5,
        stream=True,
        version="smollm2:135m",
        instance="i-1",
        ttft=0.25,
        prompt_tokens=10,
        completion_tokens=26,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


def test_exact_values_after_n_records() -> None:
    m = Metrics()
    for _ in range(7):
        m.observe(rec())
    for _ in range(3):
        m.observe(
            rec(status=502, error_type="upstream_error", completion_tokens=None, ttft=None, duration=0.03)
        )
    m.observe(rec(protocol="ollama", load_wait=4.0))
    p = samples(m.render())

    assert value(p, "superollama_requests_total", model="smollm2:135m", status="200", protocol="openai") == 7
    assert value(p, "superollama_requests_total", model="smollm2:135m", status="502", protocol="openai") == 3
    assert value(p, "superollama_requests_total", model="smollm2:135m", status="200", protocol="ollama") == 1
    assert value(p, "superollama_tokens_total", model="smollm2:135m", type="input") == 110
    assert value(p, "superollama_tokens_total", model="smollm2:135m", type="output") == 8 * 26
    # latency: 8 x 1.5 s and 3 x 0.03 s, cumulative buckets
    lat = "superollama_request_duration_seconds"
    assert value(p, lat + "_count", model="smollm2:135m") == 11
    assert value(p, lat + "_sum", model="smollm2:135m") == pytest.approx(8 * 1.5 + 3 * 0.03)
    assert value(p, lat + "_bucket", model="smollm2:135m", le="0.025") == 0
    assert value(p, lat + "_bucket", model="smollm2:135m", le="0.05") == 3
    assert value(p, lat + "_bucket", model="smollm2:135m", le="1.0") == 3
    assert value(p, lat + "_bucket", model="smollm2:135m", le="2.5") == 11
    assert value(p, lat + "_bucket", model="smollm2:135m", le="+Inf") == 11
    assert len([k for k in p if k[0] == lat + "_bucket"]) == len(LATENCY_BUCKETS) + 1
    # TTFT only where known; tokens/s = 26 tokens over 1.5 - 0.25 s when streaming
    assert value(p, "superollama_time_to_first_token_seconds_count", model="smollm2:135m") == 8
    tps = "superollama_output_tokens_per_second"
    assert value(p, tps + "_count", model="smollm2:135m") == 8
    assert value(p, tps + "_sum", model="smollm2:135m") == pytest.approx(8 * 26 / 1.25)
    assert value(p, tps + "_bucket", model="smollm2:135m", le="20.0") == 0
    assert value(p, tps + "_bucket", model="smollm2:135m", le="30.0") == 8
    assert value(p, "superollama_load_wait_seconds_count", model="smollm2:135m") == 1
    assert value(p, "superollama_request_errors_total", model="smollm2:135m", type="upstream_error") == 3
    assert value(p, "superollama_upstream_errors_total", model="smollm2:135m", kind="upstream_error") == 3


def test_every_family_parses_with_its_type() -> None:
    m = Metrics()
    m.observe(rec(status=429, error_type="rate_limited"))
    m.observe(rec(status=503, error_type="upstream_error"))
    m.inflight(1)
    m.instance_event("i-1", "smollm2:135m", "ready", load_seconds=1.0)
    m.instance_event("i-2", "smollm2:135m", "failed")
    m.drop("sinks")
    types = {f.name: f.type for f in text_string_to_metric_families(m.render().decode())}
    assert types == {
        "superollama_requests": "counter",
        "superollama_request_duration_seconds": "histogram",
        "superollama_time_to_first_token_seconds": "histogram",
        "superollama_tokens": "counter",
        "superollama_output_tokens_per_second": "histogram",
        "superollama_load_wait_seconds": "histogram",
        "superollama_requests_in_flight": "gauge",
        "superollama_load_queue_depth": "gauge",
        "superollama_request_errors": "counter",
        "superollama_upstream_errors": "counter",
        "superollama_rate_limit_rejections": "counter",
        "superollama_instances": "gauge",
        "superollama_instance_load_seconds": "histogram",
        "superollama_instance_failures": "counter",
        "superollama_telemetry_dropped": "counter",
    }


def test_non_streaming_tokens_per_second_uses_the_whole_request() -> None:
    m = Metrics()
    m.observe(rec(stream=False, ttft=1.4, duration=2.0, completion_tokens=50))
    p = samples(m.render())
    assert value(p, "superollama_output_tokens_per_second_sum", model="smollm2:135m") == 25.0


def test_rate_limits_and_refusals_before_routing_do_not_create_model_labels() -> None:
    m = Metrics(max_models=2)
    for i in range(50):  # made-up names, never routed: one label value for all
        m.observe(
            rec(model=f"junk-{i}", status=404, error_type="model_not_found", version=None, instance=None)
        )
    m.observe(rec(status=429, error_type="rate_limited", version=None, instance=None))
    m.observe(rec(model="a:1", version="a:1"))
    m.observe(rec(model="b:1", version="b:1"))
    m.observe(rec(model="c:1", version="c:1"))  # past max_models
    p = samples(m.render())
    assert value(p, "superollama_requests_total", model=UNKNOWN_MODEL, status="404", protocol="openai") == 50
    assert (
        value(p, "superollama_rate_limit_rejections_total", model=UNKNOWN_MODEL, reason="rate_limit_exceeded")
        == 1
    )
    assert value(p, "superollama_requests_total", model=OTHER_MODEL, status="200", protocol="openai") == 1
    models = {dict(labels)["model"] for name, labels in p if name == "superollama_requests_total"}
    assert models == {UNKNOWN_MODEL, "a:1", "b:1", OTHER_MODEL}


def test_the_model_label_is_the_canonical_name_never_the_clients_spelling() -> None:
    m = Metrics()
    for spelling in ("sMollm2:135m", "  smollm2:135m", "SMOLLM2:135M", "smollm2:135m"):
        m.observe(rec(model=spelling))  # routed: version is the canonical name
    for i in range(20):  # refused before routing (unknown, out of scope, malformed): no version
        m.observe(rec(model=f"secret-model:{i}", status=404, version=None, instance=None))
    p = samples(m.render())
    assert value(p, "superollama_requests_total", model="smollm2:135m", status="200", protocol="openai") == 4
    assert value(p, "superollama_requests_total", model=UNKNOWN_MODEL, status="404", protocol="openai") == 20
    assert {dict(labels)["model"] for name, labels in p if "model" in dict(labels)} == {
        "smollm2:135m",
        UNKNOWN_MODEL,
    }


def test_gauges_instances_and_drops() -> None:
    m = Metrics()
    for _ in range(3):
        m.inflight(+1)
    m.inflight(-1)
    m.queued(+1)
    m.instance_event("i-1", "smollm2:135m", "loading", node="n1")
    m.instance_event("i-2", "smollm2:135m", "loading", node="n1")
    m.instance_event("i-1", "smollm2:135m", "ready", node="n1", load_seconds=3.0)
    m.instance_event("i-2", "smollm2:135m", "failed", node="n1")
    m.instance_event("i-3", "qwen:0.5b", "ready", node="n1", load_seconds=0.4)
    m.instance_event("i-3", "qwen:0.5b", "stopped", node="n1")
    m.upstream_error("smollm2:135m", "connect_error")  # a model never observed: not a new label
    m.drop("usage", 5)
    p = samples(m.render())
    assert value(p, "superollama_requests_in_flight") == 2
    assert value(p, "superollama_load_queue_depth") == 1
    assert value(p, "superollama_instances", version="smollm2:135m", node="n1", state="ready") == 1
    assert (
        "superollama_instances",
        frozenset({("version", "qwen:0.5b"), ("node", "n1"), ("state", "ready")}),
    ) not in p
    assert value(p, "superollama_instance_load_seconds_count", version="smollm2:135m") == 1
    assert value(p, "superollama_instance_load_seconds_sum", version="qwen:0.5b") == 0.4
    assert value(p, "superollama_instance_failures_total", version="smollm2:135m") == 1
    assert value(p, "superollama_upstream_errors_total", model=OTHER_MODEL, kind="connect_error") == 1
    assert value(p, "superollama_telemetry_dropped_total", sink="usage") == 5


def test_label_values_are_escaped() -> None:
    h = Histogram("x_seconds", 'help with "quotes" and \\', ("model",), (1,))
    h.labels('we"ird\\name\n').observe(2)
    p = samples(render([h]))
    assert value(p, "x_seconds_count", model='we"ird\\name\n') == 1
    assert math.isclose(value(p, "x_seconds_sum", model='we"ird\\name\n'), 2)


async def test_metrics_handler(tmp_path: object) -> None:
    telemetry = Telemetry(Settings(metrics=True))
    telemetry.record(rec())
    response = await telemetry.metrics_handler(make_mocked_request("GET", "/metrics"))
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert isinstance(response.body, bytes)
    assert (
        value(
            samples(response.body),
            "superollama_requests_total",
            model="smollm2:135m",
            status="200",
            protocol="openai",
        )
        == 1
    )

    off = Telemetry(Settings(metrics=False))
    off.record(rec())  # nothing to count, nothing raised
    with pytest.raises(web.HTTPNotFound):
        await off.metrics_handler(make_mocked_request("GET", "/metrics"))


def test_grafana_dashboard_uses_only_exposed_metrics() -> None:
    dashboard = json.loads((Path(__file__).parents[2] / "deploy/grafana/superollama.json").read_text())
    families = {f.name for f in text_string_to_metric_families(Metrics().render().decode())}
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"superollama_[a-z_]+", target["expr"]))
    assert used, "the dashboard queries nothing"
    for name in used:
        base = re.sub(r"_(bucket|total|count|sum)$", "", name)
        assert base in families, f"the dashboard queries {name}, which Metrics does not expose"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "request rate",
        "latency",
        "time to first token",
        "tokens / s",
        "in flight",
        "errors",
        "rate-limit",
        "load time",
    ):
        assert topic in titles, topic


async def test_record_costs_microseconds() -> None:
    """The request path's share: metrics + two queue appends. ~5-15 µs measured here; the bound leaves
    room for a loaded machine but catches a regression to per-record I/O or formatting."""

    class NullStore:
        async def insert_many(self, records: object) -> int:
            return 0

        async def query(self, **_: object) -> list[RequestRecord]:
            return []

    telemetry = Telemetry(Settings(), usage_store=NullStore(), queue_size=20_000)
    records = [rec(request_id=f"r{i}") for i in range(10_000)]
    runs = []
    for k in range(5):
        start = time.perf_counter()
        for r in records[k * 2000 : (k + 1) * 2000]:
            telemetry.record(r)
        runs.append((time.perf_counter() - start) / 2000)
    assert sorted(runs)[2] < 100e-6, runs
    await telemetry.close()


def test_an_instances_latest_tokens_per_second_until_it_stops() -> None:
    m = Metrics()
    m.observe(rec())  # an instance the agent never reported: not kept (no unbounded map)
    assert m.instance_tokens_per_second("i-1") is None
    m.instance_event("i-1", "smollm2:135m", "ready", load_seconds=1.0)
    m.observe(rec())  # streamed: 26 tokens over 1.5 s - 0.25 s to the first one
    assert m.instance_tokens_per_second("i-1") == pytest.approx(26 / 1.25)
    m.observe(rec(stream=False, duration=2.0, completion_tokens=10))
    assert m.instance_tokens_per_second("i-1") == pytest.approx(5.0)
    m.observe(rec(completion_tokens=0))  # no tokens: the last number stays
    assert m.instance_tokens_per_second("i-1") == pytest.approx(5.0)
    m.instance_event("i-1", "smollm2:135m", "stopped")
    assert m.instance_tokens_per_second("i-1") is None
