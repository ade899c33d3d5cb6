"""Webhooks through a real ``superollama serve``: added with the CLI, a lifecycle change made through the
admin API reaches a receiver signed, and the delivery log shows it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from tests.e2e.conftest import ServerProcess, wait_until

from superollama.core.signing import SIGNATURE_HEADER, verify_signature


class _Receiver(ThreadingHTTPServer):
    got: list[tuple[dict[str, str], bytes]]


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.got.append((dict(self.headers.items()), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    httpd = _Receiver(("127.0.0.1", 0), _Handler)
    httpd.got = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_change_reaches_a_webhook_signed(server: ServerProcess, receiver: _Receiver) -> None:
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks"
    added = server.cli("webhooks", "add", url, "--events", "key.*", "--events", "model.disable", "--json")
    assert added.returncode == 0, added.stderr
    hook = json.loads(added.stdout)
    secret = hook["secret"]
    assert hook["events"] == ["key.*", "model.disable"]
    listed = server.admin("GET", "/admin/v1/webhooks").json()["webhooks"]
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]  # shown once only

    created = server.admin("POST", "/admin/v1/keys", json={"name": "hooked", "role": "user"})
    assert created.status_code == 201, created.text
    assert wait_until(lambda: receiver.got, timeout=15), "no delivery arrived"
    headers, body = receiver.got[0]
    assert verify_signature(secret, body, headers[SIGNATURE_HEADER])
    event = json.loads(body)
    assert event["type"] == "key.create" and headers["X-Superollama-Event"] == "key.create"
    assert event["data"]["target"] == created.json()["id"]

    shown = server.cli("webhooks", "deliveries", hook["id"], "--json")
    assert shown.returncode == 0, shown.stderr
    [delivery] = json.loads(shown.stdout)
    assert (delivery["type"], delivery["state"], delivery["status_code"]) == ("key.create", "delivered", 200)

    pinged = server.cli("webhooks", "ping", hook["id"])
    assert pinged.returncode == 0 and "delivered: HTTP 200" in pinged.stdout, pinged.stdout + pinged.stderr
    bad = server.admin("POST", "/admin/v1/webhooks", json={"url": "ftp://nowhere"})
    assert bad.status_code == 400 and "http or https" in bad.json()["error"]["message"]
    missing = server.admin("GET", "/admin/v1/webhooks/wh_nope/deliveries")
    assert missing.status_code == 404
    removed = server.cli("webhooks", "rm", hook["id"])
    assert removed.returncode == 0 and server.admin("GET", "/admin/v1/webhooks").json()["webhooks"] == []
