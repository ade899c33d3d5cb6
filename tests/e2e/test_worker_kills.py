"""``serve --workers 2`` under load: kill -9 the primary worker, a replica, then the agent process.

Real server (the bundled SmolLM2 on the real llama.cpp runtime), 8 clients streaming chats without pause.
Each client keeps one keep-alive connection and learns which worker serves it (``x-superollama-worker`` of a
``/health`` first), so at the moment of a kill the test knows which requests are in flight on the killed
process. For each kill it asserts, and prints:

- worker kills (primary, replica): the requests that failed (any error, non-200, or a stream that did
  not end with ``[DONE]``) between the kill and the recovery are at most those in flight on the killed
  worker at the kill; the model process is the same one throughout (no reload); the killed worker comes
  back (a new pid in ``server.json``) and every client gets answers again.
- the agent process kill: no request passes through the agent (the gateways talk to the model process
  directly) and the model process outlives it (its guardian is the master), so nothing is in flight on
  it and nothing may fail: failed == 0; the agent comes back (new pid) and re-adopts the same model
  process (same pid, same instance id: no reload).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.e2e.conftest import ServerProcess, wait_until

CHAT = {
    "model": "smollm2:135m",
    "messages": [{"role": "user", "content": "Count to five."}],
    "max_tokens": 12,
    "stream": True,
}
WORKER = "x-superollama-worker"
CLIENTS = 8


def pid_of(server: ServerProcess, who: str) -> int:
    """``"agent"``, or a worker's index as a string."""
    info: dict[str, Any] = json.loads((server.home / "server.json").read_text())
    return int(info["agent"] if who == "agent" else info["workers"][int(who)])


def model_pids(server: ServerProcess) -> list[int]:
    return [int(i["pid"]) for i in server.instances() if i.get("pid")]  # type: ignore[call-overload]


@dataclass
class Client:
    worker: str | None = None  # of its current connection
    busy: bool = False
    ok: int = 0
    failures: list[str] = field(default_factory=list)


class Load:
    """``CLIENTS`` threads, each streaming chats back to back on its own keep-alive connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.clients = [Client() for _ in range(CLIENTS)]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in self.clients]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _run(self, state: Client) -> None:
        http: httpx.Client | None = None
        while not self.stop.is_set():
            if http is None:
                http = httpx.Client(base_url=self.url, timeout=60, limits=httpx.Limits(max_connections=1))
                try:
                    worker = http.get("/health").headers[WORKER]
                except (httpx.HTTPError, KeyError):
                    http.close()
                    http = None
                    time.sleep(0.05)  # the port's backlog is held by the master: retry at once
                    continue
                with self.lock:
                    state.worker = worker
            with self.lock:
                state.busy = True
            error = self._chat(http)
            with self.lock:
                state.busy = False
                if error is None:
                    state.ok += 1
                else:
                    state.failures.append(error)
            if error is not None:
                http.close()
                http = None
        if http is not None:
            http.close()

    @staticmethod
    def _chat(http: httpx.Client) -> str | None:
        try:
            with http.stream("POST", "/v1/chat/completions", json=CHAT) as response:
                if response.status_code != 200:
                    return f"{response.status_code}: {response.read()[:200]!r}"
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if not lines or lines[-1] != "data: [DONE]":
            return f"stream ended without [DONE] after {len(lines)} events"
        return None

    def kill(self, pid: int, worker: str) -> int:
        """SIGKILL ``pid``; the requests in flight on ``worker`` (its index) at that moment."""
        with self.lock:  # nothing starts or ends between the count and the kill
            in_flight = sum(c.busy and c.worker == worker for c in self.clients)
            os.kill(pid, signal.SIGKILL)
        return in_flight

    def failures(self) -> int:
        with self.lock:
            return sum(len(c.failures) for c in self.clients)

    def answered(self) -> list[int]:
        with self.lock:
            return [c.ok for c in self.clients]

    def every_client_answered_since(self, before: list[int], times: int = 2) -> bool:
        return all(now >= then + times for now, then in zip(self.answered(), before, strict=True))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    home = tmp_path / "home"
    home.mkdir()
    proc = ServerProcess(home, SUPEROLLAMA_WORKERS="2").start(timeout=120)
    try:
        yield proc
    finally:
        proc.stop()


def _kill_and_recover(server: ServerProcess, load: Load, who: str) -> tuple[int, int]:
    """Kill ``who`` under load; wait until it is back and every client got answers again. Returns
    (failed, in flight on it at the kill)."""
    old = pid_of(server, who)
    failed_before = load.failures()
    in_flight = load.kill(old, who)  # the agent serves no request: none is in flight "on" it
    assert wait_until(lambda: pid_of(server, who) not in (0, old), timeout=60), f"{who} did not come back"
    after = load.answered()
    assert wait_until(lambda: load.every_client_answered_since(after), timeout=180), (
        f"the clients did not recover after killing {who}: {load.answered()} (from {after}); "
        f"failures: {[c.failures[-3:] for c in load.clients]}"
    )
    failed = load.failures() - failed_before
    print(f"killed {who}: {failed} failed, {in_flight} in flight on it", flush=True)
    return failed, in_flight


@pytest.mark.timeout(900)  # three kills and recoveries under load on a small shared machine
def test_killing_any_worker_or_the_agent_under_load_costs_at_most_its_requests_in_flight(
    server: ServerProcess,
) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as http:  # the model, loaded before the load
        assert http.post("/v1/chat/completions", json={**CHAT, "stream": False}).status_code == 200
    (model,) = model_pids(server)
    agent = pid_of(server, "agent")
    assert model in {p.pid for p in psutil.Process(agent).children()}  # the agent's child
    report: dict[str, tuple[int, int]] = {}
    with Load(server.url) as load:
        assert wait_until(lambda: min(load.answered()) >= 2, timeout=180), load.answered()
        assert load.failures() == 0, [c.failures for c in load.clients]
        (instance,) = [i["id"] for i in server.instances()]
        for who in ("0", "1", "agent"):  # the primary, a replica, the agent process
            report[who] = _kill_and_recover(server, load, who)
            assert model_pids(server) == [model], f"the model was reloaded after killing {who}"
        assert [i["id"] for i in server.instances()] == [instance]  # re-adopted, not reloaded
    print(
        "\nfailed / in flight on the killed process: "
        + ", ".join(f"{who}: {failed}/{in_flight}" for who, (failed, in_flight) in report.items())
    )
    for who in ("0", "1"):
        failed, in_flight = report[who]
        assert failed <= in_flight, f"killing worker {who}: {failed} failed, {in_flight} in flight on it"
    assert report["agent"][0] == 0, f"killing the agent process failed {report['agent'][0]} request(s)"
    assert pid_of(server, "agent") != agent
