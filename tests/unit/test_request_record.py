"""``RequestRecord.of`` (the data plane's positional constructor) makes the value ``RequestRecord(...)``
makes, and ``Exchange.finish`` puts each of the exchange's facts in its own field."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from superollama.core.types import RequestRecord
from superollama.gateway.exchange import Exchange
from superollama.security import Principal

FIELDS = [f.name for f in dataclasses.fields(RequestRecord)]


def test_of_takes_every_field_in_order_and_makes_the_same_value() -> None:
    assert list(inspect.signature(RequestRecord.of).parameters) == FIELDS  # a new field must be added there
    values = {name: f"v{i}" for i, name in enumerate(FIELDS)}  # distinct: a swapped pair shows
    made = RequestRecord.of(*values.values())  # type: ignore[arg-type]
    assert made == RequestRecord(**values)  # type: ignore[arg-type]
    assert {name: getattr(made, name) for name in FIELDS} == values
    assert hash(made) == hash(RequestRecord(**values))  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.cost = 1.0  # type: ignore[misc]
    assert dataclasses.replace(made, cost=0.5).cost == 0.5 and made.cost == "v22"


def test_finish_records_what_the_exchange_learned() -> None:
    principal = Principal("key_1", "ci", "so-abcdefgh")
    ex = Exchange(
        "req_1",
        "openai",
        started_at=1000.0,
        started=50.0,
        principal=principal,
        operation="chat",
        model="m",
        version="m:1",
        deployment="chat",
        target="m:1",
        instance="inst_1",
        stream=True,
        load_wait=0.25,
        first_byte=50.5,
        prompt_tokens=3,
        completion_tokens=4,
        usage_estimated=True,
        search_units=2,
        error_type="upstream_error",
        error="boom",
        input=["hi"],
        output="yo",
    )
    record = ex.finish(502, node="node_1", client="10.0.0.1", user_agent="ua/1")
    assert dataclasses.replace(record, duration=0.0) == RequestRecord(
        request_id="req_1",
        protocol="openai",
        operation="chat",
        model="m",
        status=502,
        started_at=1000.0,
        duration=0.0,
        stream=True,
        key_id="key_1",
        key_prefix="so-abcdefgh",
        version="m:1",
        deployment="chat",
        target="m:1",
        instance="inst_1",
        connection=None,
        node="node_1",
        ttft=0.5,
        load_wait=0.25,
        prompt_tokens=3,
        completion_tokens=4,
        usage_estimated=True,
        search_units=2,
        cost=None,
        error_type="upstream_error",
        error="boom",
        client="10.0.0.1",
        user_agent="ua/1",
        input=["hi"],
        output="yo",
    )
    assert record.duration > 0  # perf_counter now, from the exchange's start
    anonymous = Exchange("req_2", "ollama", connection="openai-main").finish(
        200, node="node_1", client=None, user_agent=None
    )
    assert anonymous.key_id is None and anonymous.key_prefix is None
    assert anonymous.node is None and anonymous.connection == "openai-main"  # a connection has no node
    assert anonymous.model == "" and anonymous.ttft is None
