"""Replicas end to end: a deployment target served by two llama.cpp instances of the bundled SmolLM2 on
one node, in one process and with ``serve --workers 2`` (the agent in its own process).

Deploy with ``--replicas 2`` → two backend processes (two instance ids, two ports); concurrent requests
are answered by both (each answer names its instance: ``X-Superollama-Instance``); one backend killed
with SIGKILL under load → every request is still answered and the replica is replaced; ``scale`` to 1
under load → one instance left and no request failed.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from tests.e2e.conftest import ServerProcess, wait_until

A = "smollm2:135m"
INSTANCE = "X-Superollama-Instance"


class Load:
    """``threads`` clients sending chats to ``model`` until stopped; every answer's status and instance."""

    def __init__(self, srv: ServerProcess, model: str, threads: int = 4) -> None:
        self._srv, self._model = srv, model
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.answers: list[tuple[int, str | None, str]] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(180)

    def _run(self) -> None:
        with httpx.Client(base_url=self._srv.url, timeout=120) as client:
            while not self._stop.is_set():
                try:
                    out = client.post("/v1/chat/completions", json=_body(self._model))
                    answer = (out.status_code, out.headers.get(INSTANCE), out.text[:300])
                except httpx.HTTPError as exc:
                    answer = (0, None, repr(exc))
                with self._lock:
                    self.answers.append(answer)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def failed(self) -> list[tuple[int, str | None, str]]:
        with self._lock:
            return [a for a in self.answers if a[0] != 200]


def _body(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def _ready(srv: ServerProcess) -> list[dict[str, object]]:
    return [i for i in srv.instances() if i["version"] == A and i["state"] == "ready"]


def _cli_json(srv: ServerProcess, *args: str) -> dict[str, object]:
    done = srv.cli(*args, "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.timeout(1200)  # a deploy, a kill and a scale-down under load, twice, on a small shared CPU
@pytest.mark.parametrize("workers", ["1", "2"])
def test_replicas_share_the_load_survive_a_kill_and_scale_down(tmp_path: Path, workers: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    srv = ServerProcess(home, SUPEROLLAMA_WORKERS=workers)
    try:
        srv.start(timeout=120)
        _run(srv)
    finally:
        srv.stop()


def _run(srv: ServerProcess) -> None:
    # deploy with two replicas: two backend processes, each its own instance id and port
    deployed = _cli_json(srv, "deploy", "chat", "--target", f"{A}=100", "--replicas", "2")
    target = deployed["live"][0]  # type: ignore[index]
    assert target["replicas"] == 2 and len(target["instances"]) == 2, deployed
    ready = _ready(srv)
    assert len(ready) == 2, ready
    assert len({i["id"] for i in ready}) == 2
    assert len({i["pid"] for i in ready}) == 2
    ports = {httpx.URL(str(i["endpoint"])).port for i in ready}
    assert len(ports) == 2, ready
    ids = {str(i["id"]) for i in ready}

    # concurrent requests are answered by both
    with Load(srv, "chat", threads=6) as load:
        assert wait_until(lambda: load.count() >= 12, timeout=300), load.answers
    assert not load.failed(), load.failed()
    served = Counter(a[1] for a in load.answers)
    assert set(served) == ids, served  # every answer names one of the two, and both answered
    shown = _cli_json(srv, "deployments", "show", "chat")
    listed = {i["id"] for i in shown["live"][0]["instances"]}  # type: ignore[index]
    assert listed == ids, shown
    assert srv.cli("deployments", "show", "chat").stdout.count("inst-") == 2

    # one backend killed under load: every request is answered, the replica is replaced
    victim = ready[0]
    with Load(srv, "chat", threads=4) as load:
        assert wait_until(lambda: load.count() >= 4, timeout=300)
        os.kill(int(victim["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        replaced = wait_until(
            lambda: len(now := _ready(srv)) == 2 and victim["id"] not in {i["id"] for i in now},
            timeout=300,
        )
        assert replaced, srv.instances()
        after = load.count()
        assert wait_until(lambda: load.count() >= after + 8, timeout=300)
    assert not load.failed(), load.failed()
    ready = _ready(srv)
    assert len({i["pid"] for i in ready}) == 2 and int(victim["pid"]) not in {i["pid"] for i in ready}  # type: ignore[call-overload]
    ids = {str(i["id"]) for i in ready}
    served = Counter(a[1] for a in load.answers[after:])
    assert set(served) == ids, served  # the replacement takes requests too

    # scale to one under load: one instance left, no request failed
    with Load(srv, "chat", threads=4) as load:
        assert wait_until(lambda: load.count() >= 4, timeout=300)
        scaled = _cli_json(srv, "scale", "chat", A, "1")
        assert scaled["live"][0]["replicas"] == 1, scaled  # type: ignore[index]
        left = _ready(srv)
        assert len(left) == 1 and str(left[0]["id"]) in ids, left
        after = load.count()
        assert wait_until(lambda: load.count() >= after + 8, timeout=300)
    assert not load.failed(), load.failed()
    late = load.answers[after + 4 :]  # (an answer of the drained one may be counted just after)
    assert late and {a[1] for a in late} == {left[0]["id"]}, Counter(a[1] for a in late)
    assert len([i for i in srv.instances() if i["version"] == A]) == 1
