"""What the workers of one server exchange: the routing snapshot (JSON round trip), the merged metrics of
several processes (one exposition, every identical series summed), and the primary's errors."""

from __future__ import annotations

import orjson
from prometheus_client.parser import text_string_to_metric_families

from superollama.control import Route, RouteTarget, RoutingTable
from superollama.core import Endpoint, RequestRecord
from superollama.errors import LoadTimeout, ModelNotFound
from superollama.telemetry import Metrics
from superollama.workers.link import error_from_json
from superollama.workers.metrics import merge_expositions
from superollama.workers.primary import error_json
from superollama.workers.snapshot import decode_table, table_json


def test_the_routing_snapshot_survives_the_wire() -> None:
    endpoint = Endpoint("http://127.0.0.1:9000", "openai", "m", (("Authorization", "Bearer x"),), False)
    table = RoutingTable.build(
        [
            Route("a:latest", "a:latest", True, 10, (RouteTarget("inst-1", endpoint),)),
            Route("b:latest", "b:latest", False, 20, capabilities=("completion",)),
            Route("c/m", "c/m", True, 30, connection="c", unavailable="down"),
        ],
        generation=7,
    )
    back = decode_table(orjson.loads(orjson.dumps(table_json(table))))
    assert back == table
    assert back.lookup("a") == table.lookup("a")
    assert back.routes["a:latest"].targets[0].endpoint.headers == (("Authorization", "Bearer x"),)


def _record(model: str, status: int, duration: float, tokens: int) -> RequestRecord:
    return RequestRecord(
        request_id="r",
        protocol="openai",
        operation="chat",
        model=model,
        status=status,
        started_at=0.0,
        duration=duration,
        version=model,
        prompt_tokens=tokens,
        completion_tokens=tokens,
    )


def test_merged_metrics_are_the_sum_of_every_workers() -> None:
    workers = [Metrics(), Metrics(), Metrics()]
    one = Metrics()  # what a single process would have counted
    observations = [
        (0, _record("a", 200, 0.02, 3)),
        (1, _record("a", 200, 0.4, 5)),
        (1, _record("b", 500, 1.5, 0)),
        (2, _record("a", 429, 0.001, 0)),
        (2, _record("c", 200, 30.0, 7)),
    ]
    for index, record in observations:
        workers[index].observe(record)
        one.observe(record)
    workers[1].inflight(2)
    one.inflight(2)
    workers[0].instance_event("inst-1", "a", "ready", node="n", load_seconds=1.2)
    one.instance_event("inst-1", "a", "ready", node="n", load_seconds=1.2)
    merged = merge_expositions(m.render() for m in workers)

    def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples
        }

    got, want = samples(merged), samples(one.render())
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-9, key
    assert merged.count(b"# TYPE superollama_requests_total counter") == 1


def test_an_error_of_the_primary_is_raised_as_the_same_error() -> None:
    for exc in (LoadTimeout("still loading", retry_after=5), ModelNotFound("no such model", param="model")):
        back = error_from_json(orjson.loads(error_json(exc)), exc.status)
        assert type(back) is type(exc)
        assert (back.message, back.status, back.retry_after, back.param) == (
            exc.message,
            exc.status,
            exc.retry_after,
            exc.param,
        )
