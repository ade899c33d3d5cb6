"""Canary rollouts and shadow traffic through a real ``serve`` and its CLI.

* a canary whose target fails (a connection to a local stand-in answering 500s) rolls back by itself;
* a canary within bounds (two real versions on llama.cpp: the bundled SmolLM2 and a ``cp`` of it) is
  promoted by itself — after a restart of the control plane in the middle of the rollout;
* shadow traffic: the client's answers do not change, the comparisons appear (admin API and CLI);
* with ``serve --workers 2`` the analysis reads the windows of both worker processes.

Short intervals come from settings (``SUPEROLLAMA_ROLLOUT_*``); no timing is asserted: each test waits for
an outcome with a generous deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.standins import StandIn
from tests.e2e.test_workers import pinned

FAST = {
    "SUPEROLLAMA_ROLLOUT_REPORT_INTERVAL": "0.3",
    "SUPEROLLAMA_ROLLOUT_TICK": "0.3",
    "SUPEROLLAMA_ROLLOUT_WINDOW": "30",
    "SUPEROLLAMA_CONNECTION_REFRESH": "0.3",
}
A, B = "smollm2:135m", "smollm2:135m-b"
HI = [{"role": "user", "content": "Say hi"}]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[ServerProcess]:
    home = tmp_path / "gw"
    home.mkdir()
    srv = ServerProcess(home, **FAST).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def second_stand_in() -> Iterator[StandIn]:
    server = StandIn().start()
    try:
        yield server
    finally:
        server.stop()


class Load:
    """Clients chatting with ``model`` without pause until stopped: the answers' status codes."""

    def __init__(self, url: str, model: str, clients: int = 2, max_tokens: int = 4) -> None:
        self.statuses: list[int] = []
        self.targets: list[str] = []
        self._stop = threading.Event()
        body = {"model": model, "messages": HI, "max_tokens": max_tokens}
        self._threads = [threading.Thread(target=self._run, args=(url, body)) for _ in range(clients)]

    def _run(self, url: str, body: dict[str, Any]) -> None:
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                out = client.post(url + "/v1/chat/completions", json=body)
                self.statuses.append(out.status_code)
                self.targets.append(out.headers.get("X-Superollama-Target", ""))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=150)


def _connect(srv: ServerProcess, name: str, stand_in: StandIn) -> None:
    done = srv.cli("connect", "openai", f"http://127.0.0.1:{stand_in.port}", "--name", name)
    assert done.returncode == 0, done.stderr
    assert wait_until(lambda: f"{name}/echo-1" in _model_ids(srv), timeout=30)


def _model_ids(srv: ServerProcess) -> list[str]:
    return [m["id"] for m in httpx.get(srv.url + "/v1/models", timeout=30).json()["data"]]


def _rollout(srv: ServerProcess, name: str) -> dict[str, Any]:
    out = srv.admin("GET", f"/admin/v1/deployments/{name}/rollout")
    assert out.status_code == 200, out.text
    return dict(out.json())


def _state(srv: ServerProcess, name: str) -> str:
    return str(_rollout(srv, name)["state"])


def test_a_failing_canary_rolls_back_by_itself(
    gateway: ServerProcess, stand_in: StandIn, second_stand_in: StandIn
) -> None:
    _connect(gateway, "good", stand_in)
    _connect(gateway, "bad", second_stand_in)
    second_stand_in.failing = True
    assert gateway.cli("deploy", "chat", "--target", "good/echo-1=100").returncode == 0
    bad = gateway.admin("POST", "/admin/v1/deployments/chat/rollout", json={"to": "nope:1"})
    assert bad.status_code == 400 and "neither a version" in bad.text
    worse = gateway.admin(
        "POST", "/admin/v1/deployments/chat/rollout", json={"to": "bad/echo-1", "every": "x"}
    )
    assert worse.status_code == 400 and "duration" in worse.json()["error"]["message"]
    done = gateway.cli(
        "rollout", "chat", "--to", "bad/echo-1", "--canary", "30", "--step", "20", "--every", "1s",
        "--max-error-rate", "1%", "--max-p95-latency", "+20%", "--min-samples", "5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "running, bad/echo-1 at 30 %" in done.stdout
    again = gateway.admin("POST", "/admin/v1/deployments/chat/rollout", json={"to": "bad/echo-1"})
    assert again.status_code == 409
    with Load(gateway.url, "chat") as load:
        assert wait_until(lambda: _state(gateway, "chat") != "running", timeout=90)
    rollout = _rollout(gateway, "chat")
    assert rollout["state"] == "rolled_back", rollout
    last = rollout["decisions"][-1]
    assert last["action"] == "rollback" and "error rate" in last["reason"]
    assert last["canary"]["errors"] > 0 and last["stable"]["errors"] == 0
    assert max(load.statuses) >= 500 and 200 in load.statuses
    shown = gateway.admin("GET", "/admin/v1/deployments/chat").json()
    assert [(t["name"], t["weight"]) for t in shown["targets"]] == [("good/echo-1", 100)]
    assert any(
        ("bad/echo-1", 30) in [(t["name"], t["weight"]) for t in h["targets"]] for h in shown["history"]
    )
    assert shown["rollout"]["state"] == "rolled_back"
    after = httpx.post(
        gateway.url + "/v1/chat/completions", json={"model": "chat", "messages": HI}, timeout=60
    )
    assert after.status_code == 200 and after.headers["X-Superollama-Target"] == "good/echo-1"
    events = gateway.admin("GET", "/admin/v1/events", params={"limit": 200}).json()
    actions = [e["action"] for e in events.get("events", events)]
    assert "rollout.start" in actions and "rollout.rollback" in actions
    cli = gateway.cli("deployments", "show", "chat")
    assert cli.returncode == 0 and "rolled_back" in cli.stdout and "rollback" in cli.stdout


def test_a_canary_within_bounds_is_promoted_by_itself_across_a_restart(fresh_server: ServerProcess) -> None:
    fresh_server.env.update(FAST)
    srv = fresh_server.start()
    assert srv.cli("cp", A, B).returncode == 0
    assert srv.cli("deploy", "chat", "--target", f"{A}=100").returncode == 0
    done = srv.cli(
        "rollout", "chat", "--to", B, "--canary", "40", "--step", "30", "--every", "1s",
        "--max-error-rate", "5%", "--max-p95-latency", "+400%", "--min-samples", "4",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    srv.stop()  # the control plane restarts in the middle: the rollout is in the registry
    srv.start()
    assert _state(srv, "chat") == "running"
    with Load(srv.url, "chat", max_tokens=2) as load:
        assert wait_until(lambda: _state(srv, "chat") != "running", timeout=300, interval=0.5)
    rollout = _rollout(srv, "chat")
    assert rollout["state"] == "promoted", rollout["decisions"]
    actions = [d["action"] for d in rollout["decisions"]]
    assert actions[0] == "start" and actions[-1] == "promote" and "step" in actions
    assert set(load.statuses) == {200} and {A, B} <= set(load.targets)
    shown = srv.admin("GET", "/admin/v1/deployments/chat").json()
    assert [(t["name"], t["weight"]) for t in shown["targets"]] == [(B, 100)]
    out = httpx.post(
        srv.url + "/v1/chat/completions", json={"model": "chat", "messages": HI, "max_tokens": 2}, timeout=120
    )
    assert out.status_code == 200 and out.headers["X-Superollama-Target"] == B


def test_shadow_copies_change_nothing_for_the_client_and_are_compared(
    gateway: ServerProcess, stand_in: StandIn, second_stand_in: StandIn
) -> None:
    _connect(gateway, "live", stand_in)
    _connect(gateway, "next", second_stand_in)
    assert gateway.cli("deploy", "chat", "--target", "live/echo-1=100").returncode == 0
    off = gateway.admin("GET", "/admin/v1/deployments/chat/shadow")
    assert off.status_code == 404
    done = gateway.cli("shadow", "chat", "--to", "next/echo-1", "--percent", "100")
    assert done.returncode == 0, done.stderr
    assert "shadow 100%" in done.stdout
    client = httpx.Client(base_url=gateway.url, timeout=60)
    for i in range(6):
        out = client.post(
            "/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": f"hello {i}"}]},
        )
        assert out.status_code == 200 and out.headers["X-Superollama-Target"] == "live/echo-1"
        assert out.json()["choices"][0]["message"]["content"] == f"{i} olleh"
    assert wait_until(
        lambda: gateway.admin("GET", "/admin/v1/deployments/chat/shadow").json()["samples"] >= 6, timeout=30
    )
    summary = gateway.admin("GET", "/admin/v1/deployments/chat/shadow", params={"last": 3}).json()
    assert summary["shadow"] == {"target": "next/echo-1", "percent": 100}
    assert summary["exact_match_rate"] == 1.0 and summary["failed"] == 0 and len(summary["last"]) == 3
    assert summary["last"][0]["primary_target"] == "live/echo-1" and summary["last"][0]["shadow_length"] == 7
    assert second_stand_in.chats >= 6
    second_stand_in.failing = True  # a failing shadow: the client still gets its answer
    out = client.post("/v1/chat/completions", json={"model": "chat", "messages": HI})
    assert out.status_code == 200 and out.json()["choices"][0]["message"]["content"] == "ih yaS"
    assert wait_until(
        lambda: gateway.admin("GET", "/admin/v1/deployments/chat/shadow").json()["failed"] >= 1, timeout=30
    )
    shown = gateway.cli("deployments", "show", "chat")
    assert (
        shown.returncode == 0
        and "shadow: next/echo-1 at 100 %" in shown.stdout
        and "HTTP 500" in shown.stdout
    )
    assert gateway.cli("shadow", "chat", "--off").returncode == 0
    chats = second_stand_in.chats
    for _ in range(3):
        assert client.post("/v1/chat/completions", json={"model": "chat", "messages": HI}).status_code == 200
    still = gateway.admin("GET", "/admin/v1/deployments/chat/shadow").json()
    assert still["shadow"] is None and second_stand_in.chats == chats  # off: no more copies
    client.close()


def test_every_client_api_is_mirrored_and_its_answers_compared(
    gateway: ServerProcess, stand_in: StandIn, second_stand_in: StandIn
) -> None:
    """Ollama chat and generate, Anthropic Messages and the Responses API on a deployment with a shadow: each
    client gets the live target's answer in its own protocol, and each request reaches the shadow once,
    compared with that answer (the two stand-ins answer alike: every comparison is an exact match)."""
    _connect(gateway, "live", stand_in)
    _connect(gateway, "next", second_stand_in)
    assert gateway.cli("deploy", "chat", "--target", "live/echo-1=100").returncode == 0
    assert gateway.cli("shadow", "chat", "--to", "next/echo-1", "--percent", "100").returncode == 0
    client = httpx.Client(base_url=gateway.url, timeout=60)
    user = [{"role": "user", "content": "hello"}]
    answers = {
        "/api/chat": lambda r: r["message"]["content"],
        "/api/generate": lambda r: r["response"],
        "/v1/messages": lambda r: r["content"][0]["text"],
        "/v1/responses": lambda r: r["output"][0]["content"][0]["text"],
    }
    bodies = {
        "/api/chat": {"model": "chat", "messages": user, "stream": False},
        "/api/generate": {"model": "chat", "prompt": "hello", "stream": False},
        "/v1/messages": {"model": "chat", "messages": user, "max_tokens": 16},
        "/v1/responses": {"model": "chat", "input": "hello"},
    }
    for path, body in bodies.items():
        out = client.post(path, json=body, headers={"anthropic-version": "2023-06-01"})
        assert out.status_code == 200, (path, out.text)
        assert out.headers["X-Superollama-Target"] == "live/echo-1", path
        assert answers[path](out.json()) == "olleh", path
    assert wait_until(lambda: second_stand_in.chats >= 4, timeout=30)
    assert wait_until(
        lambda: gateway.admin("GET", "/admin/v1/deployments/chat/shadow").json()["samples"] >= 4, timeout=30
    )
    summary = gateway.admin("GET", "/admin/v1/deployments/chat/shadow", params={"last": 4}).json()
    assert summary["samples"] == 4 and second_stand_in.chats == 4  # one copy per request, no more
    assert summary["failed"] == 0 and summary["exact_match_rate"] == 1.0
    assert all(s["primary_target"] == "live/echo-1" and s["shadow_length"] == 5 for s in summary["last"])
    client.close()


def test_with_two_workers_the_analysis_sees_both_processes(
    tmp_path: Path, stand_in: StandIn, second_stand_in: StandIn
) -> None:
    home = tmp_path / "w2"
    home.mkdir()
    # Reports every second, kept 3.3 s: a worker slowed by a loaded machine still counts between reports.
    env = {**FAST, "SUPEROLLAMA_ROLLOUT_REPORT_INTERVAL": "1", "SUPEROLLAMA_ROLLOUT_WINDOW": "600"}
    srv = ServerProcess(home, SUPEROLLAMA_WORKERS="2", **env).start(timeout=120)
    try:
        _connect(srv, "good", stand_in)
        _connect(srv, "bad", second_stand_in)
        second_stand_in.failing = True
        assert srv.cli("deploy", "chat", "--target", "good/echo-1=100").returncode == 0
        body = {"to": "bad/echo-1", "canary": 50, "every": "1h", "min_samples": 1000}  # holds: no judgement
        assert srv.admin("POST", "/admin/v1/deployments/chat/rollout", json=body).status_code == 201
        sent = 0
        for worker in (0, 1):
            # The split is random: each worker sends until it has answered from both targets (10 requests at
            # least), so that both report both (ten requests alone all land on one target 1 time in 512).
            targets: list[str] = []
            with pinned(srv.url, worker) as client:
                while len(targets) < 10 or len(set(targets)) < 2:
                    out = client.post("/v1/chat/completions", json={"model": "chat", "messages": HI})
                    targets.append(out.headers["X-Superollama-Target"])
                    assert len(targets) < 100, targets
            sent += len(targets)

        seen: dict[str, Any] = {}

        def both() -> bool:
            """One snapshot in which both workers reported every request they answered (a report can land
            between two requests, so the first snapshot with two reporters may not hold them all)."""
            seen.update(_rollout(srv, "chat")["live"])
            reports = [seen.get(t, {}) for t in ("good/echo-1", "bad/echo-1")]
            answered = sum(r.get("requests", 0) for r in reports)
            return all(r.get("gateways") == 2 for r in reports) and answered == sent

        assert wait_until(both, timeout=30), seen
        assert seen["bad/echo-1"]["error_rate"] == 1.0 and seen["good/echo-1"]["errors"] == 0
        aborted = srv.cli("rollout", "chat", "--abort")
        assert aborted.returncode == 0 and "aborted" in aborted.stdout
    finally:
        srv.stop()


def test_shadow_to_a_real_version_is_compared_by_embeddings(tmp_path: Path, stand_in: StandIn) -> None:
    """The shadow is SmolLM2 on llama.cpp, its answers differ from the stand-in's: exact match false, and
    the similarity of the two texts by the embedding model set (SmolLM2 too)."""
    home = tmp_path / "emb"
    home.mkdir()
    srv = ServerProcess(home, SUPEROLLAMA_SHADOW_EMBEDDING_MODEL=A, **FAST).start()
    try:
        _connect(srv, "live", stand_in)
        assert srv.cli("deploy", "chat", "--target", "live/echo-1=100").returncode == 0
        done = srv.cli("shadow", "chat", "--to", A, "--percent", "100")
        assert done.returncode == 0, done.stderr
        out = httpx.post(
            srv.url + "/v1/chat/completions",
            json={"model": "chat", "messages": HI, "max_tokens": 4},
            timeout=120,
        )
        assert out.status_code == 200 and out.json()["choices"][0]["message"]["content"] == "ih yaS"

        def compared() -> bool:
            return bool(srv.admin("GET", "/admin/v1/deployments/chat/shadow").json()["samples"])

        assert wait_until(compared, timeout=300, interval=0.5)
        summary = srv.admin("GET", "/admin/v1/deployments/chat/shadow").json()
        sample = summary["last"][0]
        assert sample["error"] is None and sample["exact"] is False and sample["shadow_length"] > 0
        assert sample["target"] == A and -1.0 <= sample["similarity"] <= 1.0
        assert summary["similarity"] is not None and summary["exact_match_rate"] == 0.0
    finally:
        srv.stop()


@pytest.mark.postgres
def test_on_postgres_the_leader_judges_traffic_another_gateway_served(
    tmp_path: Path, pg_url: str, stand_in: StandIn, second_stand_in: StandIn
) -> None:
    """Two gateways share Postgres: the rollout starts through gateway b and every request goes through
    b, so the leader (a: it started first) rolls back from b's reported windows alone."""
    import redis
    from tests.databases import postgres_schema_sync, schema_url
    from tests.e2e.test_gateways import REDIS_URL, Pair

    with postgres_schema_sync(pg_url, "test_rollouts") as schema:
        redis.Redis.from_url(REDIS_URL).flushdb()
        pair = Pair(tmp_path, schema_url(pg_url, schema), **FAST)
        try:
            pair.a.start(timeout=120)
            pair.b.start(timeout=120)
            gateways = pair.a.admin("GET", "/admin/v1/gateways").json()
            assert gateways["leader"] == "gw-a", gateways
            _connect(pair.a, "good", stand_in)
            _connect(pair.a, "bad", second_stand_in)
            assert wait_until(lambda: {"good/echo-1", "bad/echo-1"} <= set(_model_ids(pair.b)), timeout=30)
            second_stand_in.failing = True
            assert pair.a.cli("deploy", "chat", "--target", "good/echo-1=100").returncode == 0
            body = {"to": "bad/echo-1", "canary": 30, "every": "1s", "min_samples": 5}
            started = pair.b.admin("POST", "/admin/v1/deployments/chat/rollout", json=body)
            assert started.status_code == 201, started.text
            with Load(pair.b.url, "chat"):
                assert wait_until(lambda: _state(pair.b, "chat") != "running", timeout=90)
            rollout = _rollout(pair.a, "chat")
            assert rollout["state"] == "rolled_back", rollout["decisions"]
            assert rollout["decisions"][-1]["actor"] == "rollout"
            shown = pair.b.admin("GET", "/admin/v1/deployments/chat").json()
            assert [(t["name"], t["weight"]) for t in shown["targets"]] == [("good/echo-1", 100)]
        finally:
            pair.stop()
