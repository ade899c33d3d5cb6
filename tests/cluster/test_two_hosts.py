"""Two real hosts (``tests/cluster/netns.py``: network namespaces with addresses of their own, a veth pair
between them): the control plane and its Ray head on host A, ``superollama agent --join`` on host B as
node ``far``. SmolLM2 runs on ``far`` (the control plane's own node is cordoned) and answers through A's
gateway.

1. The link is cut for longer than Ray's health check: ``far`` is seen ``down``, its instance leaves
   routing, a request gets a 503 at once. The link comes back: the agent brings the node back by itself
   (a new Ray node, the same name, one node ``far``), the model process the cut left on B is gone, and
   the next chat starts exactly one instance (one model process, one instance actor).
2. A cut longer than the agent's fence: the agent stops its Ray node while the link is still cut (Ray
   would leave it, and the model process, waiting for the head), keeps trying to join, and is back once
   the link is; again exactly one instance.

The times (cut to ``down``, restore to ``up`` and to the next answer) are printed (``pytest -s``; README,
"Many machines"). Every process runs inside one of the namespaces; the fixture kills whatever is left
there by PID and deletes both (root only: skipped otherwise, with the reason)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from tests.cluster.netns import Host, TwoHosts, unavailable
from tests.e2e.conftest import ServerProcess, wait_until

pytestmark = pytest.mark.cluster

MODEL = "smollm2:135m"
NODE_TIMEOUT = 180  # a Ray head or node start on a loaded 2-core machine
# Ray's health check, in the head and the joined node alike: every 500 ms, 1 s to answer, dead after 3
# misses. Over a cut link nothing answers, so the timeout counts too (Ray's defaults: 3 s, 10 s, 5 misses).
HEALTH = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_initial_delay_ms": "0",
}

# seconds B's agent waits for the Ray head over a cut link before it stops its Ray node and the model
# processes (``agent --fence``, 60 s by default): longer than the first cut lasts, shorter than the second
FENCE = 30


@pytest.fixture
def hosts() -> Iterator[TwoHosts]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    pair = TwoHosts(os.getpid())
    try:
        pair.make()
    except RuntimeError as exc:  # e.g. a container without the right to make namespaces
        pair.remove()
        pytest.skip(f"cannot make network namespaces here: {exc}")
    try:
        yield pair
    finally:
        pair.remove()


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="so-2h-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Api:
    """The control plane's HTTP API, called from host A with the admin key."""

    def __init__(self, host: Host, url: str, key: str) -> None:
        self.host, self.url, self.headers = host, url, {"Authorization": f"Bearer {key}"}

    def get(self, path: str) -> Any:
        reply = self.host.call(httpx.get, self.url + path, headers=self.headers, timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def chat(self, text: str = "Say hi") -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
        return self.host.call(
            httpx.post, self.url + "/v1/chat/completions", json=body, headers=self.headers, timeout=300
        )

    def far(self) -> dict[str, Any] | None:
        """Node ``far`` (never two of that name)."""
        nodes = [n for n in self.get("/admin/v1/nodes")["nodes"] if n["name"] == "far"]
        assert len(nodes) <= 1, nodes
        return nodes[0] if nodes else None

    def instances(self) -> list[dict[str, Any]]:
        return list(self.get("/admin/v1/instances")["instances"])


def _up(api: Api, not_id: str | None = None) -> dict[str, Any] | None:
    node = api.far()
    if node and node["state"] == "ready" and node["inventory"].get("ray_node_id") not in (None, not_id):
        return node
    return None


def _waited(predicate: Callable[[], object], timeout: float, what: str, since: float) -> float:
    """Seconds from ``since`` until ``predicate`` held (polled every 0.2 s); fails after ``timeout``."""
    assert wait_until(predicate, timeout=timeout, interval=0.2), what
    return time.monotonic() - since


def _in(host: Host, marker: str) -> list[psutil.Process]:
    """The processes on ``host`` whose command line holds ``marker``."""
    found = []
    for pid in host.pids():
        try:
            proc = psutil.Process(pid)
            if marker in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def _end_clock(pid: int) -> Future[float]:
    """When process ``pid`` ends (``time.monotonic()``), seen from a thread of its own."""

    def watch() -> float:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait()
        return time.monotonic()

    pool = ThreadPoolExecutor(1, thread_name_prefix=f"end-{pid}")
    try:
        return pool.submit(watch)
    finally:
        pool.shutdown(wait=False)


def _agent(hosts: TwoHosts, srv: ServerProcess, token: str, run_dir: Path) -> subprocess.Popen[bytes]:
    store = str(run_dir / "b")  # B's own blob store: the model is copied there from A
    argv = ["agent", "--join", srv.url, "--name", "far", "--node-ip", hosts.b.ip, "--data", store]
    with (run_dir / "agent.log").open("ab") as out:
        return subprocess.Popen(
            hosts.b.argv(sys.executable, "-m", "superollama.cli", *argv),
            env={
                **srv.env,
                "SUPEROLLAMA_JOIN_TOKEN": token,  # kept out of ps
                "SUPEROLLAMA_AGENT_FENCE": str(FENCE),
            },
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )


def _one_of_each(api: Api, srv: ServerProcess, hosts: TwoHosts) -> dict[str, Any]:
    """The one instance, on far, with exactly one model process and one instance actor on the two hosts,
    and one node named far, up (``nodes ls``)."""
    [inst] = api.instances()
    assert inst["node"] == "far" and inst["endpoint"].startswith(f"http://{hosts.b.ip}:"), inst
    workers = [p.pid for h in hosts.hosts for p in _in(h, "superollama.runtimes.llamacpp_worker")]
    assert workers == [int(inst["pid"])], workers
    assert workers[0] in hosts.b.pids()  # the model process runs on host B
    actors = [p.pid for h in hosts.hosts for p in _in(h, "InstanceActor")]
    assert len(actors) == 1, actors
    listed = srv.cli("nodes", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    far = [(n["name"], n["state"]) for n in json.loads(listed.stdout) if n["name"] == "far"]
    assert far == [("far", "ready")], far
    return inst


@pytest.mark.timeout(900)  # two cuts, three Ray node starts and three loads on a small shared CPU
def test_a_node_behind_a_cut_link_comes_back_by_itself_without_duplicates(
    hosts: TwoHosts, run_dir: Path
) -> None:
    a, b = hosts.a, hosts.b
    srv = ServerProcess(
        run_dir / "a",
        SUPEROLLAMA_NODE_NAME="hq",
        SUPEROLLAMA_HOST=a.ip,
        RAY_TMPDIR=str(run_dir),
        RAY_USAGE_STATS_ENABLED="0",
        **HEALTH,
    )
    srv.wrap = a.argv()
    srv.args = ["--cluster", "--host", a.ip, "--cluster-host", a.ip]
    # a non-loopback address needs keys: the first admin key is made on the home's registry, offline
    made = srv.cli("keys", "create", "--offline", "--name", "ops", "--role", "admin", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    srv.env["SUPEROLLAMA_API_KEY"] = key  # what the CLI sends
    agent: subprocess.Popen[bytes] | None = None

    def agent_log() -> str:
        return (run_dir / "agent.log").read_text(errors="replace")

    def back(not_id: str, since: float) -> tuple[dict[str, Any], float]:
        """far up again by itself, as a new Ray node: the node and the seconds since ``since``."""
        node: dict[str, Any] | None = None

        def up() -> bool:
            nonlocal node
            node = _up(api, not_id=not_id)
            return node is not None

        seconds = _waited(up, NODE_TIMEOUT, f"far up again by itself:\n{agent_log()[-4000:]}", since)
        assert node is not None and node["address"] == b.ip
        assert agent is not None and agent.poll() is None
        return node, seconds

    def served(since: float) -> tuple[dict[str, Any], float, float]:
        """The next chat answered: the one instance, seconds since ``since`` and of the chat itself."""
        asked = time.monotonic()
        reply = api.chat()
        done = time.monotonic()
        assert reply.status_code == 200, reply.text
        return _one_of_each(api, srv, hosts), done - since, done - asked

    try:
        srv.start(timeout=NODE_TIMEOUT)
        assert srv.url.startswith(f"http://{a.ip}:"), srv.url
        api = Api(a, srv.url, key)
        # the control plane's own node takes nothing: far is placement's only choice
        assert srv.cli("nodes", "cordon", "hq").returncode == 0
        made = srv.cli("nodes", "token", "create", "--name", "b-host", "--json")
        assert made.returncode == 0, made.stderr
        agent = _agent(hosts, srv, json.loads(made.stdout)["token"], run_dir)
        assert wait_until(lambda: _up(api), timeout=NODE_TIMEOUT, interval=1), agent_log()[-4000:]
        node = _up(api)
        assert node is not None and node["address"] == b.ip
        inst, _, _ = served(time.monotonic())
        pid = int(inst["pid"])
        actor = psutil.Process(pid).parent()
        assert actor is not None and "InstanceActor" in " ".join(actor.cmdline())
        ended = _end_clock(pid)

        # 1. the cable is pulled on B's side, past Ray's health check, and plugged back
        cut = time.monotonic()
        b.cut()
        unrouted = _waited(lambda: api.instances() == [], 120, "the instance left routing", cut)
        down = _waited(lambda: (api.far() or {}).get("state") == "down", 120, "far seen down", cut)
        # B's raylet has not heard of its death yet: the model process still runs there, unreachable, and
        # the next request does not wait on it (hq is cordoned, far is down: nowhere to start one)
        left_running = not ended.done()
        refused = api.chat()
        assert refused.status_code == 503 and api.instances() == [], refused.text
        restore = time.monotonic()
        b.restore()
        node, up = back(node["inventory"]["ray_node_id"], restore)
        assert "joining again" in agent_log()
        # the model process and actor the cut left on B are gone (nothing orphaned)
        reaped = ended.result(timeout=60) - restore
        assert pid not in b.pids()
        assert wait_until(lambda: actor.pid not in b.pids(), timeout=60)
        again, answered, chat = served(restore)
        assert again["id"] != inst["id"] and int(again["pid"]) != pid
        print(
            f"\ntwo hosts, a short cut: cut -> instance out of routing {unrouted:.1f} s, -> node down "
            f"{down:.1f} s (model process still running on B then: {left_running}); restore -> old model "
            f"process gone {reaped:.1f} s, -> node up {up:.1f} s, -> next chat answered {answered:.1f} s "
            f"(that chat: {chat:.1f} s, a new instance loaded on far)"
        )

        # 2. a cut longer than the agent's fence: Ray leaves B's raylet waiting for the head, so the agent
        # stops it, the model process ends while the link is still cut, and the agent keeps trying to join
        pid = int(again["pid"])
        ended = _end_clock(pid)
        tries = agent_log().count("did not answer the join")
        cut = time.monotonic()
        b.cut()
        gone = ended.result(timeout=FENCE + 60) - cut
        assert "has not answered for" in agent_log()
        assert wait_until(lambda: agent_log().count("did not answer the join") > tries, timeout=60)
        restore = time.monotonic()
        b.restore()
        node, up = back(node["inventory"]["ray_node_id"], restore)
        last, answered, chat = served(restore)
        assert last["id"] != again["id"]
        print(
            f"two hosts, a long cut: cut -> model process on B gone {gone:.1f} s (the agent's fence: "
            f"{FENCE} s); restore -> node up {up:.1f} s, -> next chat answered "
            f"{answered:.1f} s (that chat: {chat:.1f} s)"
        )
    finally:
        if srv.proc is not None:
            srv.cli("stop", MODEL)
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
        srv.stop(timeout=60)
