"""Incidents: the rate-limit storm detector (a fake clock), log lines, and the webhook against a local
aiohttp stand-in that fails once and then accepts (loopback only)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from tests.waiting import wait_until

from superollama.core import EventRecord, RequestRecord
from superollama.settings import Settings
from superollama.telemetry import Incidents, Telemetry, is_incident
from superollama.telemetry.events import STORM_ACTION


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Receiver:
    """A webhook receiver: answers the statuses in ``script`` in turn (then 204) and keeps every body."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()

    async def hook(request: web.Request) -> web.Response:
        rx.bodies.append(orjson.loads(await request.read()))
        status = rx.script.pop(0) if rx.script else 204
        rx.statuses.append(status)
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rx.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield rx
    await runner.cleanup()


def crashed() -> EventRecord:
    return EventRecord(
        action="instance.crashed",
        target="smollm2:135m",
        result="failed",
        detail={"instance": "i-1", "error": "exit 9"},
    )


def test_which_events_are_incidents() -> None:
    assert is_incident(crashed())
    assert is_incident(EventRecord(action="instance.load", target="m", result="failed"))
    assert is_incident(EventRecord(action="connection.unhealthy", target="c", result="failed"))
    assert is_incident(EventRecord(action="budget.exhausted", target="so-aaaa"))
    assert not is_incident(EventRecord(action="instance.load", target="m"))
    assert not is_incident(EventRecord(action="job.pull", target="m", result="failed"))  # the user sees it


def test_storm_detection_sliding_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    incidents = Incidents(storm_count=5, storm_window=10.0, clock=clock)
    caplog.set_level(logging.INFO, "superollama.events")
    for _ in range(4):
        assert not incidents.rate_limited("so-aaaa")
        clock.now += 3.0  # 5 rejections over 12 s: no storm
    assert not incidents.rate_limited("so-aaaa")
    clock.now += 0.5
    assert incidents.rate_limited("so-aaaa")  # the last 5 within 9.5 s: a storm
    assert not incidents.rate_limited("so-aaaa")  # one incident per window
    assert not incidents.rate_limited("so-bbbb")  # other keys count on their own
    storms = [r for r in caplog.records if r.getMessage().startswith(STORM_ACTION)]
    assert len(storms) == 1 and storms[0].levelno == logging.WARNING
    assert "so-aaaa" in storms[0].getMessage() and '"rejections":5' in storms[0].getMessage()
    clock.now += 11.0
    for _ in range(4):
        assert not incidents.rate_limited("so-aaaa")
    assert incidents.rate_limited("so-aaaa")  # a new window, a new storm


def test_many_keys_are_forgotten_not_hoarded() -> None:
    clock = FakeClock()
    incidents = Incidents(storm_count=3, storm_window=1.0, clock=clock)
    for i in range(25_000):
        incidents.rate_limited(f"k{i}")
        clock.now += 0.001
    assert len(incidents._hits) <= 10_000


async def test_webhook_retries_after_a_failure(receiver: Receiver) -> None:
    receiver.script = [500]
    incidents = Incidents(receiver.url, node="n1", backoff=0.01)
    await incidents.start()
    incidents.notify(EventRecord(action="instance.load", target="m", result="ok"))  # not an incident
    incidents.notify(crashed())
    await incidents.close()
    assert receiver.statuses == [500, 204]
    first, second = receiver.bodies
    assert first == second
    assert second["action"] == "instance.crashed" and second["target"] == "smollm2:135m"
    assert second["detail"] == {"instance": "i-1", "error": "exit 9"} and second["node"] == "n1"
    assert second["text"] == "superollama: instance.crashed smollm2:135m (failed): exit 9"
    assert (incidents.sent, incidents.failed) == (1, 0)


async def test_webhook_gives_up_after_retries_and_on_a_refusal(receiver: Receiver) -> None:
    receiver.script = [503, 503, 503, 400]
    incidents = Incidents(receiver.url, retries=2, backoff=0.01)
    await incidents.start()
    incidents.notify(crashed())  # 503 x3: given up
    incidents.notify(crashed())  # 400: not retried
    await incidents.close()
    assert receiver.statuses == [503, 503, 503, 400]
    assert (incidents.sent, incidents.failed) == (0, 2)


async def test_webhook_queue_is_bounded() -> None:
    incidents = Incidents("http://127.0.0.1:9/never-started", max_queue=2)
    for _ in range(5):
        incidents.notify(crashed())  # not started: nothing drains the queue
    assert incidents.dropped == 3
    await incidents.close()


async def test_telemetry_turns_429s_into_a_storm_incident(receiver: Receiver) -> None:
    telemetry = Telemetry(Settings(events_webhook=receiver.url))
    telemetry.incidents._storm_count = 3  # a small storm for the test
    await telemetry.start()
    for i in range(3):
        telemetry.record(
            RequestRecord(
                request_id=f"r{i}",
                protocol="openai",
                operation="chat",
                model="m",
                status=429,
                started_at=0.0,
                duration=0.001,
                key_prefix="so-aaaa",
                error_type="rate_limited",
            )
        )
    await wait_until(lambda: receiver.bodies, what="the storm incident delivered")
    await telemetry.close()
    (body,) = receiver.bodies
    assert (body["action"], body["target"], body["detail"]["model"]) == (STORM_ACTION, "so-aaaa", "m")
