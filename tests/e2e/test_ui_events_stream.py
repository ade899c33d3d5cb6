"""``GET /admin/v1/events/stream`` (the web UI's live feed) against a real server: an event written by
an admin call arrives on an open stream; a reconnection with ``Last-Event-ID`` resumes after it; the
filters and the admin guard hold."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
from tests.e2e.conftest import UiServer, wait_until

SMOL = "smollm2:135m"


def messages(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The SSE messages of a stream: ``id``, ``event`` and the decoded ``data`` of each."""
    current: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in current:
                yield current
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            current[field] = orjson.loads(value) if field == "data" else value


def test_an_event_arrives_on_the_open_stream_and_a_reconnection_resumes(ui_server: UiServer) -> None:
    headers = {"Authorization": f"Bearer {ui_server.admin_key}"}
    seen: list[dict[str, Any]] = []
    opened = threading.Event()

    def read() -> None:
        params = {"backlog": "0", "target": "stream-copy:1"}
        url = f"{ui_server.url}/admin/v1/events/stream"
        with httpx.stream("GET", url, params=params, headers=headers, timeout=60) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            opened.set()
            for message in messages(response):
                seen.append(message)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened.wait(30), "the stream did not open"
    done = ui_server.api("POST", "/admin/v1/copy", json={"source": SMOL, "destination": "stream-copy:1"})
    assert done.status_code == 201, done.text
    assert wait_until(lambda: seen, timeout=30), "no event arrived on the open stream"
    reader.join(30)
    event = seen[0]
    assert event["event"] == "event" and event["data"]["action"] == "model.copy", event
    assert event["data"]["target"] == "stream-copy:1" and event["id"] == str(event["data"]["id"])

    # resume: after an id, only what came later (here: the disable of the copy)
    ui_server.api("POST", "/admin/v1/models/stream-copy:1/disable")
    resume = {**headers, "Last-Event-ID": event["id"]}
    url = f"{ui_server.url}/admin/v1/events/stream?target=stream-copy:1"
    with httpx.stream("GET", url, headers=resume, timeout=60) as response:
        first = next(messages(response))
    assert first["data"]["action"] == "model.disable", first


def test_the_stream_needs_an_admin_or_viewer_key(ui_server: UiServer) -> None:
    user = ui_server.key("user", "stream-user")
    url = f"{ui_server.url}/admin/v1/events/stream"
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {user}"}, timeout=30).status_code == 403
    bad = httpx.get(url, params={"backlog": "x"}, headers={"Authorization": f"Bearer {ui_server.admin_key}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "backlog", bad.text


def test_a_stream_with_a_timeout_ends_by_itself_after_sending_what_came(ui_server: UiServer) -> None:
    headers = {"Authorization": f"Bearer {ui_server.admin_key}"}
    done = ui_server.api("POST", "/admin/v1/copy", json={"source": SMOL, "destination": "stream-window:1"})
    assert done.status_code == 201, done.text
    url = f"{ui_server.url}/admin/v1/events/stream"
    params = {"backlog": "5", "target": "stream-window:1", "timeout": "1.5"}
    started = time.monotonic()
    with httpx.stream("GET", url, params=params, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        got = list(messages(response))  # returns only when the server ends the stream
    took = time.monotonic() - started
    assert [m["data"]["action"] for m in got] == ["model.copy"], got
    assert 1.5 <= took < 30, took  # ended by the server, not by the client's 60 s timeout

    for bad in ("0", "-1", "x", "inf", "nan"):
        refused = httpx.get(url, params={"timeout": bad}, headers=headers, timeout=30)
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["error"]["param"] == "timeout", refused.text
