"""Instances that stop under load, through a real ``superollama serve`` and the real llama.cpp runtime.

- ``rm --force`` with chats streaming: routing stops first (new requests get 404), the requests in flight
  finish, then the instance stops and the files go; a drain bound (``SUPEROLLAMA_DRAIN_TIMEOUT``) cuts a
  request that outlives it, and the answer says how many were cut.
- a llama.cpp child killed with SIGKILL (busy or idle): the requests sent right after it are answered by
  its replacement (one worker and ``--workers 2``); no error names an internal address.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.e2e.conftest import ServerProcess, wait_until

MODEL = "smollm2:135m"
PROMPT = [{"role": "user", "content": "Count from one to twenty in words."}]
INTERNAL = "127.0.0.1:"
WORKER = "x-superollama-worker"
KINDS = ("openai", "openai-stream", "ollama-chat", "ollama-generate")


@dataclass
class Outcome:
    kind: str
    started: float
    ended: float
    status: int
    ok: bool
    body: str


def _stream_lines(client: httpx.Client, path: str, body: dict[str, object]) -> tuple[int, list[str]]:
    with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            return response.status_code, [response.read().decode()]
        return 200, [line for line in response.iter_lines() if line]


def _send(client: httpx.Client, kind: str, max_tokens: int = 24) -> Outcome:
    """One request of ``kind``; ``ok`` when the whole answer arrived (a stream to its last event)."""
    started = time.monotonic()
    openai = {"model": MODEL, "messages": PROMPT, "max_tokens": max_tokens}
    ollama = {"model": MODEL, "options": {"num_predict": max_tokens}}
    try:
        if kind == "openai":
            r = client.post("/v1/chat/completions", json=openai)
            status, text = r.status_code, r.text
            ok = status == 200 and bool(r.json()["choices"][0]["message"]["content"])
        elif kind == "openai-stream":
            status, lines = _stream_lines(client, "/v1/chat/completions", {**openai, "stream": True})
            text = "\n".join(lines)
            ok = status == 200 and lines[-1:] == ["data: [DONE]"] and "event: error" not in text
        elif kind == "ollama-chat":
            status, lines = _stream_lines(client, "/api/chat", {**ollama, "messages": PROMPT})
            text = "\n".join(lines)
            ok = status == 200 and json.loads(lines[-1]).get("done") is True
        else:  # ollama-generate, not streamed
            r = client.post("/api/generate", json={**ollama, "prompt": "Say hi.", "stream": False})
            status, text = r.status_code, r.text
            ok = status == 200 and r.json().get("done") is True
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, IndexError) as exc:
        status, text, ok = 0, repr(exc), False
    return Outcome(kind, started, time.monotonic(), status, ok, text)


def _all_ok(outcomes: list[Outcome]) -> bool:
    assert [o for o in outcomes if not o.ok] == []
    return True


def _all_at_once(clients: list[httpx.Client], kinds: tuple[str, ...] = KINDS) -> list[Outcome]:
    """Every kind of request on every client (or the next kind on each, with ``kinds=()``), all started
    together; their outcomes."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def one(client: httpx.Client, kind: str) -> None:
        outcome = _send(client, kind)
        with lock:
            outcomes.append(outcome)

    pairs = [(c, k) for c in clients for k in kinds] or [(c, KINDS[i % 4]) for i, c in enumerate(clients)]
    threads = [threading.Thread(target=one, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return outcomes


class Load:
    """``n`` threads sending chats in a loop until stopped (each stops at its first 404: the model is
    gone); every outcome kept."""

    def __init__(self, url: str, n: int, max_tokens: int = 32) -> None:
        self.max_tokens = max_tokens
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(url, KINDS[i % 3])) for i in range(n)]

    def _run(self, url: str, kind: str) -> None:
        with httpx.Client(base_url=url, timeout=180) as client:
            while not self._stop.is_set():
                outcome = _send(client, kind, max_tokens=self.max_tokens)
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.status == 404:
                    return

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(300)


def _gone(o: Outcome) -> bool:
    """A 404 that says the model does not exist, in the request's protocol."""
    return o.status == 404 and (
        "model_not_found" in o.body if o.kind.startswith("openai") else "not found" in o.body
    )


def _in_flight(server: ServerProcess) -> int:
    return sum(int(i["in_flight"]) for i in server.instances())  # type: ignore[call-overload]


def _remove_events(server: ServerProcess) -> list[dict[str, object]]:
    return list(server.admin("GET", "/admin/v1/events", params={"target": MODEL}).json()["events"])


def _no_internal_address(outcomes: list[Outcome]) -> None:
    leaked = [o for o in outcomes if INTERNAL in o.body]
    assert not leaked, leaked[:3]


# -- rm --force ----------------------------------------------------------------------------------------
def test_rm_force_drains_the_requests_in_flight_then_removes_the_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # a bound no request reaches here, even on a slow machine: what is tested is the drain itself
    server = ServerProcess(home, SUPEROLLAMA_DRAIN_TIMEOUT="600").start()
    try:
        _rm_force_under_load(server)
    finally:
        server.stop()


def _rm_force_under_load(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        assert _send(client, "openai").ok  # loaded
    blobs = {p.name for p in (server.home / "blobs").iterdir()}
    assert blobs

    removed: list[httpx.Response] = []
    with Load(server.url, 4, max_tokens=64) as load:
        assert wait_until(lambda: _in_flight(server) >= 3, timeout=60)
        began = time.monotonic()
        url = f"{server.url}/admin/v1/models/{MODEL}"
        rm = threading.Thread(  # as long as the drain takes
            target=lambda: removed.append(httpx.delete(url, params={"force": "true"}, timeout=600))
        )
        rm.start()
        assert wait_until(lambda: any(i["state"] == "draining" for i in server.instances()), timeout=60)
        with httpx.Client(base_url=server.url, timeout=300) as client:
            during = _all_at_once([client])  # requests while it drains: 404 on both APIs, nothing loads
        rm.join(600)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            after = _all_at_once([client])

    before = [o for o in load.outcomes if o.started < began]
    assert len(before) >= 3  # at least the 3 seen in flight (the 4th thread may be between requests)
    failed = [o for o in before if not o.ok]
    assert not failed, failed[:3]  # every request that started before the rm was answered in full
    assert len(during) == 4 and all(_gone(o) for o in during), during
    for o in load.outcomes:  # later ones were refused as for a missing model (not restarted, not cut)
        assert o.ok or _gone(o), o
    assert removed[0].status_code == 200, removed[0].text
    assert removed[0].json() == {"deleted": MODEL, "cut": 0}
    assert len(after) == 4 and all(_gone(o) for o in after), after
    _no_internal_address(load.outcomes)

    stop = next(e for e in _remove_events(server) if e["action"] == "instance.stop")
    assert stop["detail"]["reason"] == "removed" and stop["detail"]["cut"] == 0  # type: ignore[index]
    assert server.instances() == []
    assert json.loads(server.cli("ls", "--json").stdout) == []
    assert not blobs & {p.name for p in (server.home / "blobs").iterdir()}  # the files are gone


def test_rm_force_cuts_what_outlives_the_drain_bound_and_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, SUPEROLLAMA_DRAIN_TIMEOUT="0.5").start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            assert _send(client, "openai").ok  # loaded
        long_run: dict[str, Outcome] = {}
        body = {"model": MODEL, "messages": PROMPT, "max_tokens": 3000, "ignore_eos": True, "stream": True}

        def long_stream() -> None:
            with httpx.Client(base_url=server.url, timeout=180) as client:
                started = time.monotonic()
                status, lines = _stream_lines(client, "/v1/chat/completions", body)
                text = "\n".join(lines)
                ok = lines[-1:] == ["data: [DONE]"] and "event: error" not in text
                long_run["stream"] = Outcome("long", started, time.monotonic(), status, ok, text)

        thread = threading.Thread(target=long_stream)
        thread.start()
        assert wait_until(lambda: _in_flight(server) == 1, timeout=60)
        result = server.cli("rm", MODEL, "--force")
        thread.join(180)
        assert result.returncode == 0, result.stderr
        assert "1 request in flight was cut" in result.stdout
        cut = long_run["stream"]
        assert not cut.ok and "event: error" in cut.body  # the one request past the bound failed, and said so
        _no_internal_address([cut])
        events = _remove_events(server)
        remove = next(e for e in events if e["action"] == "model.remove")
        assert remove["detail"]["cut"] == 1  # type: ignore[index]
    finally:
        server.stop()


# -- a crashed instance ----------------------------------------------------------------------------------
def _llama_pid(server: ServerProcess) -> int:
    ps = json.loads(server.cli("ps", "--json").stdout)
    assert len(ps) == 1, ps
    return int(ps[0]["pid"])


def _replaced(server: ServerProcess, old_pid: int) -> None:
    """A new instance serves, the killed one is gone from the list, and the crash is an event."""
    pids = [int(i["pid"]) for i in server.instances()]  # type: ignore[call-overload]
    assert len(pids) == 1 and pids[0] != old_pid
    crashed = [e for e in _remove_events(server) if e["action"] == "instance.crashed"]
    assert crashed


@pytest.mark.parametrize("busy", [True, False], ids=["busy", "idle"])
def test_requests_sent_right_after_a_kill_are_answered_by_the_replacement(
    fresh_server: ServerProcess, busy: bool
) -> None:
    server = fresh_server.start()
    with httpx.Client(base_url=server.url, timeout=180) as client:
        assert _all_ok(_all_at_once([client]))  # loaded, with pooled connections to it
        pid = _llama_pid(server)
        if busy:
            with Load(server.url, 2) as load:
                assert wait_until(lambda: _in_flight(server) >= 2, timeout=60)
                os.kill(pid, signal.SIGKILL)
                outcomes = _all_at_once([client])
            _no_internal_address(
                load.outcomes
            )  # the requests cut by the kill may fail, but say nothing internal
        else:
            os.kill(pid, signal.SIGKILL)
            outcomes = _all_at_once([client])
    assert len(outcomes) == len(KINDS)
    failed = [o for o in outcomes if not o.ok]
    assert not failed, failed
    _no_internal_address(outcomes)
    _replaced(server, pid)


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[ServerProcess]:
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, SUPEROLLAMA_WORKERS="2").start(timeout=120)
    try:
        yield server
    finally:
        server.stop()


def _pinned(url: str, worker: int) -> httpx.Client:
    """A client whose one keep-alive connection is served by ``worker`` (SO_REUSEPORT spreads them)."""
    for _ in range(400):
        client = httpx.Client(
            base_url=url, timeout=180, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)
        )
        if client.get("/health").headers[WORKER] == str(worker):
            return client
        client.close()
    raise AssertionError(f"no connection reached worker {worker}")


def test_with_two_workers_requests_right_after_a_kill_are_answered_on_both(
    two_workers: ServerProcess,
) -> None:
    server = two_workers
    # four keep-alive connections to each worker, pinned before the kill
    clients = [_pinned(server.url, w) for w in (0, 0, 0, 0, 1, 1, 1, 1)]
    try:
        assert _all_ok(_all_at_once([clients[0], clients[4]]))  # loaded; each worker has pooled connections
        pid = _llama_pid(server)
        os.kill(pid, signal.SIGKILL)
        outcomes = _all_at_once(clients, kinds=())  # each kind on each worker, all sent at once
    finally:
        for client in clients:
            client.close()
    assert len(outcomes) == 8 and {o.kind for o in outcomes} == set(KINDS)
    failed = [o for o in outcomes if not o.ok]
    assert not failed, failed
    _no_internal_address(outcomes)
    _replaced(server, pid)
