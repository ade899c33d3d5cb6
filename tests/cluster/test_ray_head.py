"""``serve --cluster`` without an address starts a Ray head of its own (``cluster/head.py``): on the
address it is given (loopback here), taken over by the next control plane after a crash (one head, not
two), stopped by its PID with everything it started; with its control store on Redis, a pure control
node beside the machine's own Ray node, started again when it dies, nothing it ran dying with it (the
instances on the control plane's own machine included); with Ray's token, which refuses a node that
lacks it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
from tests.cluster.test_join import HEALTH, JOIN_HOST, NODE_TIMEOUT, Agent, _kill, _up
from tests.e2e.conftest import ServerProcess
from tests.e2e.conftest import wait_until as wait_until_sync
from tests.waiting import wait_until

from superollama.cluster.head import RayHead

pytestmark = pytest.mark.cluster


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _listening(procs: list[psutil.Process]) -> set[str]:
    """The addresses the head's processes accept connections on."""
    out = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        out |= {c.laddr.ip.removeprefix("::ffff:") for c in conns if c.status == psutil.CONN_LISTEN}
    return out


async def test_a_head_on_loopback_taken_over_after_a_crash_and_stopped_by_pid(tmp_path: Path) -> None:
    temp = Path("/tmp") / f"so-head-{tmp_path.name[-12:]}"  # Ray's socket paths must stay short
    head = RayHead("127.0.0.1", "solo", temp)
    address = await head.start()
    assert address.startswith("127.0.0.1:")
    assert head._proc is not None
    pid = head._proc.pid
    try:

        def raylet_listens() -> bool:  # the node's own server, started after the control store
            return any("raylet" in " ".join(p.cmdline()) and _listening([p]) for p in _tree(pid))

        await wait_until(raylet_listens, timeout=60, interval=0.2, what="the head's raylet listening")
        procs = _tree(pid)
        assert any("gcs_server" in " ".join(p.cmdline()) for p in procs)
        assert _listening(procs) == {"127.0.0.1"}  # no port on all interfaces

        # a control plane that died without its cleanup: the next one finds the same head answering
        successor = RayHead("127.0.0.1", "solo", temp)
        assert await successor.start() == address
        assert successor._proc is None  # nothing started
        await successor.stop()
        _, alive = await asyncio.to_thread(psutil.wait_procs, procs, 30)
        assert alive == [], [p.cmdline()[:3] for p in alive]
    finally:
        await head.stop()
        shutil.rmtree(temp, ignore_errors=True)


# -- the head's control store on Redis, and Ray's token ------------------------------------------------

REDIS = "redis://127.0.0.1:6379/0"
MODEL = "smollm2:135m"


def _store_keys(namespace: str) -> list[bytes]:
    """The Ray GCS's keys of ``namespace`` in the test Redis (``RAY{namespace}@TABLE``)."""
    client = redis.Redis.from_url(REDIS)
    try:
        return list(client.keys(f"RAY{namespace}@*"))
    finally:
        client.close()


def _drop_store(namespace: str) -> None:
    client = redis.Redis.from_url(REDIS)
    try:
        for key in client.keys(f"RAY{namespace}@*"):
            client.delete(key)
    finally:
        client.close()


def _chat(srv: ServerProcess, timeout: float = 180) -> httpx.Response:
    return httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4},
        timeout=timeout,
    )


def _head(home: Path) -> dict[str, Any]:
    return dict(json.loads((home / "ray" / "head.json").read_text()))


def _own_node(home: Path) -> list[psutil.Process]:
    """The control plane's own Ray node (``OwnNode``: ``ray start --block --address=HEAD``), and what
    it runs."""
    pid = int(json.loads((home / "ray" / "node.json").read_text())["pid"])
    return _tree(pid)


def _instance_actors(procs: list[psutil.Process]) -> list[int]:
    """The instance actors' worker processes among ``procs`` (one per instance, never two)."""
    return [pid for pid, line in _lines(procs) if "InstanceActor" in line]


def _lines(procs: list[psutil.Process]) -> list[tuple[int, str]]:
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append((proc.pid, " ".join(proc.cmdline())))
    return out


def _node(srv: ServerProcess, name: str) -> dict[str, Any] | None:
    found = [n for n in json.loads(srv.cli("nodes", "ls", "--json").stdout) if n["name"] == name]
    assert len(found) <= 1, found  # never two of a name
    return found[0] if found else None


def _cmdlines(procs: list[psutil.Process]) -> str:
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append(" ".join(proc.cmdline()))
    return "\n".join(out)


class Load:
    """Chat requests one after another in a thread, each one's end time and outcome kept (and its start
    time in ``started``)."""

    def __init__(self, srv: ServerProcess) -> None:
        self.results: list[tuple[float, bool]] = []
        self.started: list[float] = []
        self._stop = threading.Event()
        self._srv = srv
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.started.append(time.monotonic())
            try:
                ok = _chat(self._srv, timeout=30).status_code == 200
            except httpx.HTTPError:
                ok = False
            self.results.append((time.monotonic(), ok))

    def ok_after(self, moment: float) -> int:
        return sum(1 for at, ok in self.results if ok and at > moment)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


@pytest.mark.timeout(900)  # a head, a joined node, two loads and a head restart on a shared 2-core machine
def test_the_head_restarts_over_redis_with_its_token_and_nothing_it_ran_dies(tmp_path: Path) -> None:
    """Its own head on 127.0.0.2, its control store in a Redis namespace of this test's own, a pure
    control node (nothing of ours on it) beside the control plane's own Ray node, a machine joined with a
    join token (Ray's token handed over by the join), SmolLM2 served on the control plane's own node; the
    head's processes killed (-9, by PID): the control plane starts it again on the same address, the
    instance keeps its process and id and keeps answering, both nodes are ready again, the control
    plane's driver keeps placing; a Ray node without the token is refused; stopping the server stops its
    own node by PID and deletes the namespace's keys."""
    home = Path(tempfile.mkdtemp(prefix="so-ha-", dir="/tmp"))  # Ray's socket paths must stay short
    namespace = f"so-test-{secrets.token_hex(4)}"
    srv = ServerProcess(
        home,
        SUPEROLLAMA_CLUSTER="1",
        SUPEROLLAMA_CLUSTER_HOST=JOIN_HOST,
        SUPEROLLAMA_CLUSTER_REDIS_URL=REDIS,
        SUPEROLLAMA_CLUSTER_STORE_NAMESPACE=namespace,
        **HEALTH,
    )
    agent: Agent | None = None
    load: Load | None = None
    try:
        srv.start(timeout=NODE_TIMEOUT)
        assert _store_keys(namespace)  # the GCS keeps its tables in Redis
        token_file = home / "ray-auth-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        ray_token = token_file.read_text().strip()
        assert len(ray_token) == 64

        made = srv.cli("nodes", "token", "create", "--name", "ha", "--json")
        assert made.returncode == 0, made.stderr
        agent = Agent(srv, json.loads(made.stdout)["token"], tmp_path / "agent.log")
        assert wait_until_sync(lambda: _up(srv), timeout=NODE_TIMEOUT, interval=1), agent.output()
        head_pid = int(_head(home)["pid"])
        head_tree = [psutil.Process(head_pid), *psutil.Process(head_pid).children(recursive=True)]
        own = _own_node(home)
        seen = _cmdlines([*head_tree, *own, *agent.ray_tree(), psutil.Process(srv.pid)])
        assert ray_token not in seen  # never on a command line (ps shows those to everyone)
        assert ray_token not in srv.log.read_text() + agent.output()  # nor in a log

        # the head is a control node only: the nodes are the control plane's own and the joined one
        assert wait_until_sync(lambda: _node(srv, "local") is not None, timeout=60)
        assert {n["name"] for n in json.loads(srv.cli("nodes", "ls", "--json").stdout)} == {"local", "joined"}
        assert srv.cli("nodes", "cordon", "joined").returncode == 0  # the instance goes to `local`
        first = _chat(srv)
        assert first.status_code == 200, first.text
        assert srv.cli("nodes", "uncordon", "joined").returncode == 0
        [inst] = srv.instances()
        assert inst["node"] == "local"
        pid = int(inst["pid"])  # type: ignore[call-overload]
        actors = _instance_actors(_own_node(home))
        assert len(actors) == 1 and not _instance_actors(head_tree), _cmdlines(_own_node(home))
        own_pid = own[0].pid
        own_rss = sum(p.memory_info().rss for p in own if p.is_running()) >> 20

        # the head's processes die (-9): GCS, raylet, agents, workers, and ray start itself
        inst_node_id = _node(srv, "local")["inventory"]["ray_node_id"]  # type: ignore[index]
        load = Load(srv)
        assert wait_until_sync(lambda: load.ok_after(0) >= 2, timeout=60), load.results
        saved = _head(home)
        assert any("gcs_server" in line for line in _cmdlines(head_tree).splitlines())
        killed = time.monotonic()
        _kill(head_tree)

        def head_back() -> bool:  # a new head whose GCS accepts connections
            now = _head(home)
            if now["pid"] == saved["pid"] or not psutil.pid_exists(int(now["pid"])):
                return False
            with contextlib.suppress(psutil.NoSuchProcess):
                tree = psutil.Process(int(now["pid"])).children(recursive=True)
                if any("gcs_server" in line for line in _cmdlines(tree).splitlines()):
                    with (
                        contextlib.suppress(OSError),
                        socket.create_connection((now["host"], now["port"]), 1),
                    ):
                        return True
            return False

        assert wait_until_sync(head_back, timeout=120, interval=0.2), srv.log.read_text()[-3000:]
        back = time.monotonic()
        assert (_head(home)["host"], _head(home)["port"]) == (saved["host"], saved["port"])  # same address
        assert wait_until_sync(lambda: load.ok_after(back) >= 1, timeout=60), load.results
        answered = min(at for at, ok in load.results if ok and at > back)
        during = [ok for at, ok in load.results if killed <= at <= answered]

        # nothing it ran died: the own node's `ray start`, the same instance, process and actor
        assert psutil.pid_exists(pid) and _own_node(home)[0].pid == own_pid
        assert _instance_actors(_own_node(home)) == actors
        [same] = srv.instances()
        assert (same["id"], same["pid"], same["node"]) == (inst["id"], pid, "local")
        restarted = datetime.now(UTC)

        def refreshed(name: str) -> bool:  # the driver asks Ray again after the restart: the node answers
            node = _node(srv, name)
            if not node or node["state"] != "ready" or not node["last_seen"]:
                return False
            seen = datetime.fromisoformat(node["last_seen"])
            return (seen if seen.tzinfo else seen.replace(tzinfo=UTC)) > restarted

        assert wait_until_sync(lambda: refreshed("local"), timeout=60, interval=1), _node(srv, "local")
        assert wait_until_sync(lambda: refreshed("joined"), timeout=60, interval=1), _node(srv, "joined")
        assert _node(srv, "local")["inventory"]["ray_node_id"] == inst_node_id  # type: ignore[index]
        load.stop()
        failed = [ok for ok in during if not ok]
        # requests sent after the kill (none was in flight on a process that died: none may fail)
        after = [ok for sent, (_, ok) in zip(load.started, load.results, strict=False) if sent > killed]
        first_ok = min(at for at, ok in load.results if ok and at > killed)
        print(
            f"\nhead killed -> back (a new GCS answering): {back - killed:.1f} s; first request answered "
            f"after the kill: {first_ok - killed:.1f} s, after the head was back: {answered - killed:.1f} s; "
            f"requests ended meanwhile: {len(during)}, failed: {len(failed)}; sent after the kill: "
            f"{len(after)}, failed: {after.count(False)}; served: {load.ok_after(0)}; instance pid {pid} "
            f"unchanged; the own Ray node's RSS: {own_rss} MiB"
        )
        assert not failed and False not in after, load.results
        assert srv.proc is not None and srv.proc.poll() is None  # the control plane (the driver) lives

        # the driver still places: the instance stopped, the next request starts a new one on `joined`
        assert srv.cli("stop", MODEL).returncode == 0
        assert wait_until_sync(lambda: not psutil.pid_exists(pid), timeout=60)
        again = _chat(srv)
        assert again.status_code == 200, again.text + srv.log.read_text()[-4000:]
        [fresh] = srv.instances()
        assert fresh["id"] != inst["id"] and fresh["node"] in ("joined", "local")
        assert psutil.pid_exists(int(fresh["pid"]))  # type: ignore[call-overload]

        # a Ray node without the token is refused by the restarted head too
        ray_exe = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        intruder = subprocess.Popen(
            [
                ray_exe,
                "start",
                "--block",
                f"--address={saved['host']}:{saved['port']}",
                f"--node-ip-address={JOIN_HOST}",
                '--resources={"so_node:intruder": 1}',
                "--disable-usage-stats",
            ],
            env={**env, **HEALTH, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = intruder.communicate(timeout=180)
        finally:
            if intruder.poll() is None:  # it joined, or hangs: stopped by its PID's group
                os.killpg(intruder.pid, signal.SIGKILL)
                intruder.wait(30)
        assert intruder.returncode != 0
        assert "AuthenticationError" in out or "InvalidAuthToken" in out, out[-2000:]
        assert _node(srv, "intruder") is None

        # the server stops its head: a cluster ended on purpose leaves nothing in Redis
        assert srv.cli("stop", MODEL).returncode == 0
        agent.stop()
        assert srv.stop(timeout=90) == 0
        assert _store_keys(namespace) == []
        assert not psutil.pid_exists(own_pid)  # the own node stopped by its PID
    finally:
        if load is not None:
            load.stop()
        if agent is not None:
            agent.stop()
        srv.stop(timeout=90)
        _drop_store(namespace)
        shutil.rmtree(home, ignore_errors=True)
