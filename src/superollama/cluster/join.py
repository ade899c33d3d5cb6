"""``superollama agent --join``: a machine joins ``serve --cluster`` as a Ray node, and stays joined.

1. **Join**: ``POST /admin/v1/nodes/join`` with the join token as the bearer, the node's name and labels.
   The control plane checks the token, records the node and its labels (placement matches them), and
   answers with the Ray head's control store address, and Ray's token when the head takes one.
2. **Run**: ``ray start --block --address=ADDR --node-ip-address=IP --resources={"so_node:NAME": 1}`` as
   this process's child, in its own session (a Ctrl-C reaches only us) and with ``PR_SET_PDEATHSIG``
   (SIGTERM: a killed agent does not leave its Ray node behind). ``SUPEROLLAMA_NODE_STORE`` (``--data``)
   gives the node a blob store of its own. Ray's token goes to the child through its environment
   (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``), never on its command line (``ps`` shows that to all).
3. **Supervise**: Ray does not bring back a node it declared dead (a network cut longer than its health
   check, a raylet killed): ``ray start`` then exits. The agent joins again — so the token is checked
   again — and starts a new one, after a backoff (1 s doubling to 30 s; back to 1 s once a node ran a
   minute). A token that is revoked or expired, or a join the control plane refuses (400, 409), ends the
   agent with that message and a non-zero status; a control plane that cannot be reached is tried again.
4. **Fence**: a node cut off from the head is declared dead by the cluster, but Ray leaves its raylet
   running, waiting for the head, and with it the node's model processes (serving no one, holding their
   memory), for as long as the cut lasts. When the head's control store has not answered for ``fence``
   seconds in a row (60 s; a head restart takes a few), the agent stops its Ray node (SIGKILL to its
   process group after 5 s: no drain, the head is not there) — its model processes end with their actors
   — and joins again once the control plane answers.
5. **Stop**: on SIGTERM or SIGINT the child is stopped by its PID (SIGTERM: ``ray start --block`` stops
   the Ray processes it started; SIGKILL to its process group after a grace period) — never by
   ``ray stop``, which kills every Ray process of the machine by name.

Ray is not imported here: the node is the ``ray`` command (the same version as the control plane's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from superollama.client import APIConnectionError, APIStatusError, AsyncClient, RateLimitError, ServerError
from superollama.cluster.blobs import NODE_STORE_ENV
from superollama.cluster.control_store import auth_env
from superollama.cluster.head import RAY_ENV, is_ray_start, kill_group, stop_pid, stop_ray_start
from superollama.core.waits import wait_set
from superollama.runtimes._child import set_pdeathsig

__all__ = ["JoinRefused", "JoinSpec", "NodeSupervisor", "OwnNode", "head_answers", "local_address"]

log = logging.getLogger("superollama.cluster")

# RAY_ENV, but a node that joins must have Ray's "cluster" switch on: ``ray start --address`` refuses to run
# without it. With it on, Ray rewrites a head address of 127.0.0.1 (or localhost) to this machine's own
# address: a head on the same machine is joined on another loopback address (``--cluster-host
# 127.0.0.2``); across machines the head has a routable address anyway.
NODE_ENV = {**RAY_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
HEALTHY_RUN = 60.0  # a node that ran this long resets the backoff
STOP_GRACE = 30.0
FENCE = 60.0  # seconds without the head's control store before the node stops its Ray node
FENCE_GRACE = 5.0  # a fenced node is not drained: ``ray start`` would wait 30 s for a head it cannot reach
PROBE_EVERY = 1.0
PROBE_TIMEOUT = 2.0


class JoinRefused(Exception):
    """The control plane refused the join for good (bad, revoked or expired token; bad name; no cluster)."""


@dataclass(frozen=True)
class JoinSpec:
    url: str  # the control plane, http://HOST:PORT
    token: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    node_ip: str | None = None  # None: the address this machine reaches the control plane from
    data: Path | None = None  # the node's own blob store (SUPEROLLAMA_NODE_STORE)

    def __repr__(self) -> str:  # never print the token
        return f"JoinSpec(url={self.url!r}, name={self.name!r}, labels={dict(self.labels)!r})"


def local_address(url: str) -> str:
    """This machine's address on the route to ``url``'s host (no packet is sent: a UDP socket's
    ``connect`` only picks the route); a control plane on a loopback address is joined on that address."""
    host = socket.gethostbyname(urlsplit(url).hostname or "127.0.0.1")
    if ipaddress.ip_address(host).is_loopback:
        return host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return str(s.getsockname()[0])


Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]
Probe = Callable[[str], Awaitable[bool]]


async def head_answers(address: str) -> bool:
    """Whether the Ray head's control store (``host:port``) accepts a connection now."""
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), PROBE_TIMEOUT)
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _die_with_us() -> None:
    set_pdeathsig(signal.SIGTERM)  # in the child before it runs: a killed agent leaves no Ray node behind


class NodeSupervisor:
    """Joins, runs ``ray start --block`` and starts it again when it ends, until ``stop`` is set.
    ``say``: one line for the operator per thing that happened (joined, node ended, rejoining)."""

    dies_with_us: ClassVar[bool] = True  # the Ray node gets SIGTERM when this process dies

    def __init__(
        self,
        spec: JoinSpec,
        *,
        say: Callable[[str], None] = log.info,
        spawn: Spawn = asyncio.create_subprocess_exec,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
        fence: float = FENCE,
        probe: Probe = head_answers,
        probe_every: float = PROBE_EVERY,
    ) -> None:
        self.spec = spec
        self._say = say
        self._spawn = spawn
        self._backoff_first = backoff_first
        self._backoff_max = backoff_max
        self._fence = fence
        self._probe = probe
        self._probe_every = probe_every
        self.child: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``; ``JoinRefused`` when the control plane refuses the join."""
        node_ip = self.spec.node_ip or local_address(self.spec.url)
        async with AsyncClient(self.spec.url, self.spec.token) as client:
            await self._supervise(stop, node_ip, lambda: self._join(client))

    async def _supervise(
        self, stop: asyncio.Event, node_ip: str, join: Callable[[], Awaitable[Mapping[str, Any]]]
    ) -> None:
        """Join (``join``: the head's ``address`` and Ray's ``ray_token``), run the node, and again after
        a backoff when it ends, until ``stop``."""
        delay = self._backoff_first
        while not stop.is_set():
            try:
                answer = await join()
            except (APIConnectionError, ServerError, RateLimitError) as exc:
                self._say(f"the control plane {self.spec.url} did not answer the join: {exc.message}")
                delay = await self._pause(stop, delay)
                continue
            loop = asyncio.get_running_loop()
            started = loop.time()
            token = answer.get("ray_token")
            code = await self._run_node(str(answer["address"]), node_ip, stop, token)
            if stop.is_set():
                return
            if loop.time() - started >= HEALTHY_RUN:
                delay = self._backoff_first
            self._say(f"the Ray node ended (status {code}); joining again in {delay:g} s")
            delay = await self._pause(stop, delay)

    async def _join(self, client: AsyncClient) -> dict[str, Any]:
        try:
            answer = await client.nodes.join(self.spec.name, labels=dict(self.spec.labels))
        except (ServerError, RateLimitError):
            raise
        except APIStatusError as exc:
            raise JoinRefused(f"the control plane refused the join: {exc.message}") from exc
        return dict(answer)

    async def _pause(self, stop: asyncio.Event, delay: float) -> float:
        await wait_set(stop, delay)
        return min(delay * 2, self._backoff_max)

    def argv(self, address: str, node_ip: str) -> list[str]:
        ray = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        return [
            ray,
            "start",
            "--block",
            f"--address={address}",
            f"--node-ip-address={node_ip}",
            f"--resources={json.dumps({f'so_node:{self.spec.name}': 1})}",
            "--disable-usage-stats",
        ]

    def env(self, ray_token: str | None = None) -> dict[str, str]:
        env = {**os.environ, **NODE_ENV}
        if self.spec.data is not None:
            env[NODE_STORE_ENV] = str(self.spec.data)
        if ray_token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_token)
            env.pop("RAY_AUTH_TOKEN_PATH", None)
        return env

    async def _run_node(
        self, address: str, node_ip: str, stop: asyncio.Event, ray_token: str | None = None
    ) -> int:
        """Start the Ray node, and return its exit status once it ends (stopping it first on ``stop``)."""
        self.child = proc = await self._spawn(
            *self.argv(address, node_ip),
            stdin=asyncio.subprocess.DEVNULL,
            env=self.env(ray_token),
            start_new_session=True,  # our SIGTERM reaches it; a Ctrl-C on the terminal does not
            preexec_fn=_die_with_us if self.dies_with_us else None,
        )
        self.starts += 1
        self._say(
            f"joined {self.spec.url} as node {self.spec.name} at {node_ip}: Ray node (pid {proc.pid}) "
            f"connecting to {address}"
        )
        ended = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(stop.wait())
        fenced = asyncio.ensure_future(self._cut_off(address))
        try:
            await asyncio.wait((ended, stopping, fenced), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            fenced.cancel()
        if not ended.done():
            grace = STOP_GRACE
            if not stop.is_set():
                grace = FENCE_GRACE
                self._say(
                    f"the Ray head {address} has not answered for {self._fence:g} s: stopping this "
                    "Ray node and its model processes (the cluster has declared it dead)"
                )
            await stop_ray_start(proc, grace)
        code = await ended
        kill_group(proc.pid)  # what the ended node left in its session (agents, idle workers)
        return code

    async def _cut_off(self, address: str) -> None:
        """Return once the head's control store has not answered for ``fence`` seconds in a row."""
        loop = asyncio.get_running_loop()
        answered = loop.time()
        while True:
            if await self._probe(address):
                answered = loop.time()
            elif loop.time() - answered >= self._fence:
                return
            await asyncio.sleep(self._probe_every)


# ``ray start`` with the loopback rewrite off: a node joining a head needs Ray's "cluster" switch on
# (``NODE_ENV``), which makes Ray rewrite 127.0.0.1 (the head's address and the node's own) to the
# machine's routable address, where a head bound to loopback does not listen. The control plane's own
# node keeps the address it is given, as the head does.
_RAY_START_AS_GIVEN = (
    "import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)


class OwnNode(NodeSupervisor):
    """The control plane's own machine as a Ray node of the head it started with a control store
    (``cluster/head.py``: that head is a pure control node, so nothing of ours dies with it):
    ``ray start --block --address=HEAD --resources={"so_node:NAME": 1}`` with the machine's own CPUs and
    GPUs (Ray counts them), supervised as ``agent --join`` supervises a joined node — started again after
    a backoff when it ends, fenced, stopped by its PID, what it left killed by its process group — with
    no token check (the control plane is itself) and no PR_SET_PDEATHSIG: like the head it outlives a
    control plane killed without its cleanup (its instances keep serving), and the next control plane
    takes it over (``take_over``) instead of starting a second node of the same name. Its PID and head
    are written to ``TEMP_DIR/node.json``, its output to ``TEMP_DIR/node.log``."""

    dies_with_us: ClassVar[bool] = False

    def __init__(
        self, name: str, node_ip: str, address: str, temp_dir: Path, auth_token: Path | None, **kwargs: Any
    ) -> None:
        super().__init__(
            JoinSpec(url=address, token="", name=name, node_ip=node_ip),  # the head, for messages
            say=lambda line: log.info("own node: %s", line),
            spawn=self._spawn_logged,
            **kwargs,
        )
        self.address = address
        self.temp_dir = temp_dir
        self.auth_token = auth_token
        self.adopted: int | None = None  # the node an earlier control plane started, taken over

    @property
    def _record(self) -> Path:
        return self.temp_dir / "node.json"

    @property
    def log_path(self) -> Path:
        return self.temp_dir / "node.log"

    @property
    def pid(self) -> int | None:
        """The ``ray start --block`` process now running the node."""
        if self.adopted is not None:
            return self.adopted
        return self.child.pid if self.child is not None and self.child.returncode is None else None

    @property
    def ray_temp_dir(self) -> Path:
        """The node's own Ray directory: a driver finds it there (``ray.init(_temp_dir=…)``) rather than
        the head, which Ray prefers on the same address."""
        return self.temp_dir / "node"

    def argv(self, address: str, node_ip: str) -> list[str]:
        ray_start = super().argv(address, node_ip)[1:]
        return [sys.executable, "-c", _RAY_START_AS_GIVEN, *ray_start, f"--temp-dir={self.ray_temp_dir}"]

    def env(self, ray_token: str | None = None) -> dict[str, str]:
        return {**super().env(), **auth_env(self.auth_token)}  # the head's token file, as its driver

    async def _spawn_logged(self, *argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out, **kwargs)
        self._record.write_text(json.dumps({"pid": proc.pid, "address": self.address}))
        return proc

    def take_over(self) -> bool:
        """Whether the node an earlier control plane left for this head still runs: then it is watched
        (and started again once it ends). One left for another head is killed (by its process group)."""
        try:
            saved = json.loads(self._record.read_text())
            pid, address = int(saved["pid"]), str(saved["address"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if not is_ray_start(pid, address=address):
            return False
        if address != self.address:
            log.warning("stopping the Ray node (pid %d) left for the head %s", pid, address)
            kill_group(pid)
            return False
        self.adopted = pid
        log.info("took over this machine's Ray node (pid %d) of the head %s", pid, address)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        if self.adopted is not None:
            pid = self.adopted
            while not stop.is_set() and is_ray_start(pid, address=self.address):
                await wait_set(stop, 0.5)  # not our child: nothing to wait on but /proc
            if stop.is_set():
                await stop_pid(pid, STOP_GRACE, address=self.address)
                return
            self.adopted = None
            kill_group(pid)
            self._say(f"the Ray node (pid {pid}) an earlier control plane started ended")

        async def join() -> Mapping[str, Any]:
            return {"address": self.address}

        assert self.spec.node_ip is not None
        try:
            await self._supervise(stop, self.spec.node_ip, join)
        finally:
            self._record.unlink(missing_ok=True)
