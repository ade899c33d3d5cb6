"""Kill -9 of a whole ``superollama serve`` while another serves the same model: two gateways on one
Postgres registry and one Redis, each running SmolLM2 on llama.cpp from one shared storage root (the
version's files moved there with ``mv --to``, as on a shared disk).

Eight clients stream chats without pause, four through each gateway. They stand for a load balancer
with the usual failover on connect errors (nginx's ``proxy_next_upstream error``): a connection the
killed gateway refuses is sent to the other one, since nothing was sent on it. What may fail is only
what was in flight on the killed process at the kill — counted under the load's lock at the moment of
the kill. The killed gateway then comes back (a restart on the same home) and serves the model again,
loaded again from the shared root.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from tests.e2e.conftest import wait_until
from tests.e2e.test_gateways import BUNDLED, REDIS_URL, Pair, registry_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.postgres

CHAT = {
    "model": BUNDLED,
    "messages": [{"role": "user", "content": "Count to five."}],
    "max_tokens": 12,
    "stream": True,
}


@dataclass
class Client:
    gateway: str  # "a" or "b": where its requests go now
    busy: bool = False
    ok: int = 0
    failovers: int = 0
    failures: list[str] = field(default_factory=list)


class BalancedLoad:
    """Clients streaming chats back to back, each through one gateway; on a refused connection (nothing
    sent) a client moves to the other gateway, as a load balancer's failover would."""

    def __init__(self, urls: dict[str, str], per_gateway: int = 4) -> None:
        self.urls = urls
        self.lock = threading.Lock()
        self.clients = [Client(name) for name in urls for _ in range(per_gateway)]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in self.clients]

    def __enter__(self) -> BalancedLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _run(self, state: Client) -> None:
        while not self.stop.is_set():
            with self.lock:
                state.busy = True
                url = self.urls[state.gateway]
            outcome = _chat(url)
            with self.lock:
                state.busy = False
                if outcome is None:
                    state.ok += 1
                elif outcome == "refused":
                    state.failovers += 1
                    state.gateway = "b" if state.gateway == "a" else "a"
                else:
                    state.failures.append(outcome)

    def kill(self, pid: int, gateway: str) -> int:
        """SIGKILL ``pid``; the requests in flight through ``gateway`` at that moment."""
        with self.lock:  # nothing starts or ends between the count and the kill
            in_flight = sum(c.busy and c.gateway == gateway for c in self.clients)
            os.kill(pid, signal.SIGKILL)
        return in_flight

    def failures(self) -> int:
        with self.lock:
            return sum(len(c.failures) for c in self.clients)

    def answered(self) -> list[int]:
        with self.lock:
            return [c.ok for c in self.clients]


def _chat(url: str) -> str | None:
    """None when answered in full; ``"refused"`` when the gateway took no connection; else the failure."""
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=CHAT, timeout=60) as response:
            if response.status_code != 200:
                return f"{response.status_code}: {response.read()[:200]!r}"
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    except httpx.ConnectError:
        return "refused"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if not lines or lines[-1] != "data: [DONE]":
        return f"stream ended without [DONE] after {len(lines)} events"
    return None


@pytest.fixture
def shared_pair(tmp_path: Path, registry_url: str) -> Iterator[Pair]:  # noqa: F811
    """Gateways ``a`` and ``b`` of one worker each, both declaring the storage root ``shared``."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    shared = tmp_path / "shared-root"
    shared.mkdir()
    gateways = Pair(tmp_path, registry_url, workers=1, SUPEROLLAMA_STORAGE_ROOTS=f"shared={shared}")
    try:
        gateways.a.start(timeout=120)  # it registers the bundled model (in its home)
        gateways.b.start(timeout=120)
        yield gateways
    finally:
        gateways.stop()


@pytest.mark.timeout(600)
def test_killing_a_whole_gateway_costs_its_requests_in_flight_and_it_comes_back(shared_pair: Pair) -> None:
    a, b = shared_pair.a, shared_pair.b
    elsewhere = httpx.post(b.url + "/v1/chat/completions", json={**CHAT, "stream": False}, timeout=60)
    assert elsewhere.status_code == 503  # its files are in a's home only: a load error that says why
    error = elsewhere.json()["error"]
    assert error["code"] == "model_load_failed" and "--to ROOT" in error["message"], error
    moved = a.cli("mv", BUNDLED, "--to", "shared", timeout=300)
    assert moved.returncode == 0, moved.stderr
    for srv in (a, b):  # each gateway loads its own instance from the shared root
        first = httpx.post(srv.url + "/v1/chat/completions", json={**CHAT, "stream": False}, timeout=300)
        assert first.status_code == 200, first.text
    [on_a] = a.instances()
    model_on_a = int(on_a["pid"])  # type: ignore[call-overload]

    with BalancedLoad({"a": a.url, "b": b.url}) as load:
        assert wait_until(lambda: all(n >= 2 for n in load.answered()), timeout=120), load.answered()
        in_flight = load.kill(a.pid, "a")
        killed_at = time.monotonic()
        before = load.answered()

        # every client answered again (those of a through b); the bound only stops a failing test
        def all_again() -> bool:
            return all(n >= m + 2 for n, m in zip(load.answered(), before, strict=True))

        assert wait_until(all_again, timeout=180), (load.answered(), [c.failures[-2:] for c in load.clients])
        recovered = time.monotonic() - killed_at
        failed = load.failures()
        moved_over = sum(c.failovers for c in load.clients)
    a.stop(signal.SIGKILL)  # reaps the killed process
    print(
        f"\nkill -9 of gateway a: {failed} failed, {in_flight} in flight on it, {moved_over} clients moved "
        f"to b; all clients answered again {recovered:.2f} s after the kill",
        flush=True,
    )
    assert failed <= in_flight, [c.failures for c in load.clients]
    assert wait_until(lambda: not _alive(model_on_a), timeout=30)  # a's model process went with it

    a.start(timeout=120)  # the same home comes back, serves the model again from the shared root
    again = httpx.post(a.url + "/v1/chat/completions", json={**CHAT, "stream": False}, timeout=300)
    assert again.status_code == 200, again.text
    assert again.headers["x-superollama-gateway"] == "gw-a"
    [back] = a.instances()
    assert int(back["pid"]) != model_on_a  # type: ignore[call-overload]
    status = a.admin("GET", "/admin/v1/gateways").json()
    assert {"gw-a", "gw-b"} <= {g["id"] for g in status["gateways"] if g["alive"]}, status


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
