"""A Ray head this process starts and owns (``serve --cluster`` without ``cluster_address``).

``ray start --head --block`` runs as our child: with ``--block`` it stays in the foreground and, when it
gets SIGTERM, stops the Ray processes it started (GCS, raylet, …) — so the head is stopped by its PID,
never by ``ray stop`` (which kills every Ray process on the machine by name). Its ports bind to
``cluster_host`` (loopback by default, never all interfaces unless named). Without a control store the
head is also the machine's node (``so_node:NODE_NAME``) that instances may be placed on; with one it is
a pure control node (no CPU, no GPU, no ``so_node:``: nothing of ours runs on it, as Ray recommends for
GCS fault tolerance) and the machine's node is a Ray node of its own beside it (``join.OwnNode``:
``ray start --block --address=HEAD``, supervised like a joined machine's node, stopped before the head).

The head's PID and address are written to ``TEMP_DIR/head.json``. A control plane killed without its
cleanup leaves the head running (in its own session: its instances keep serving); the next start finds
it there, answering, and takes it over instead of starting a second head (with a control store, the
machine's own node too: ``TEMP_DIR/node.json``).

With a control store on Redis (``cluster/control_store.py``) the head is also watched (its PID, ours or
taken over): when it ends without ``stop`` — its GCS or raylet died, and ``ray start --block`` then
stops the rest — it is started again on the same address and port over the same Redis namespace, so the
GCS reads the cluster's tables back and the other nodes' raylets reconnect (the machine's own node's
too); the detached instance and node actors keep running, those on the machine's own node included. What
was left of the dead head (its agents and idle workers, in its process group) is killed first, by that
group. A head stopped on purpose ends its cluster: the namespace's keys are deleted after it, and the
next start is a new cluster. Without Redis nothing is watched: a new head would be a new, empty control
store that the running driver and nodes cannot rejoin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from superollama.cluster.control_store import RedisStore, auth_env

if TYPE_CHECKING:
    from superollama.cluster.join import OwnNode

__all__ = ["RAY_ENV", "RayHead", "is_ray_start", "kill_group", "stop_pid", "stop_ray_start"]

log = logging.getLogger("superollama.cluster")

# Ray's defaults this project changes (each process that starts or joins a cluster takes them):
# no usage report, and a loopback address kept as given (Ray otherwise rewrites 127.0.0.1 to the
# machine's own address).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


# The control plane is a Ray driver: without this, Ray's C++ failure handler takes SIGTERM (it logs a
# "crash" and ends the process) before our own shutdown has stopped what it started.
DRIVER_ENV = {**RAY_ENV, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}


def ray_env_defaults() -> None:
    """This process's Ray environment (a driver's), before Ray is imported."""
    for key, value in DRIVER_ENV.items():
        os.environ.setdefault(key, value)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RayHead:
    """``store``: the control store on Redis (None: in the GCS's memory, nothing restarted);
    ``auth_token``: the file of Ray's token (None: no token authentication)."""

    def __init__(
        self,
        host: str,
        node_name: str,
        temp_dir: Path,
        *,
        start_timeout: float = 60.0,
        store: RedisStore | None = None,
        auth_token: Path | None = None,
        restart_delay: float = 1.0,
    ) -> None:
        self.host = host
        self.node_name = node_name
        self.temp_dir = temp_dir
        self.start_timeout = start_timeout
        self.store = store
        self.auth_token = auth_token
        self.restart_delay = restart_delay
        self.port = 0
        self.restarts = 0
        self.downtimes: list[float] = []  # seconds from each death seen to the head answering again
        self._proc: asyncio.subprocess.Process | None = None
        self._adopted_pid: int | None = None  # a head an earlier control plane started
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self.node: OwnNode | None = None  # this machine's Ray node (with a control store)
        self._node_task: asyncio.Task[None] | None = None
        self._node_stop = asyncio.Event()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The ``ray start --head --block`` process now running the head."""
        if self._adopted_pid is not None:
            return self._adopted_pid
        return self._proc.pid if self._proc is not None else None

    @property
    def _record(self) -> Path:
        return self.temp_dir / "head.json"

    def _saved(self) -> tuple[int, str, int] | None:
        try:
            saved = json.loads(self._record.read_text())
            return int(saved["pid"]), str(saved["host"]), int(saved["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def _adopt(self) -> bool:
        saved = self._saved()
        if saved is None:
            return False
        pid, host, port = saved
        if host != self.host or not is_ray_start(pid):
            return False
        self.port = port
        if not await self._answers():
            return False
        self._adopted_pid = pid
        log.info("took over the Ray head (pid %d) on %s", pid, self.address)
        return True

    async def start(self) -> str:
        """Start the head (or take over the one an earlier control plane left) and return its address
        once its control store answers."""
        self._stopping = False
        if await self._adopt():
            self._watch()
            self._start_node()
            return self.address
        try:
            self.port = await asyncio.to_thread(self._port_to_start_on)
            await self._spawn()
        except RuntimeError:
            await self.stop()
            raise
        self._watch()
        self._start_node()
        return self.address

    def _port_to_start_on(self) -> int:
        """A free port; with a control store, the port of the head an earlier control plane recorded
        when it is free (its GCS state is read back and its nodes reconnect), else a new port over a
        namespace emptied first (a new cluster: the tables of an unknown earlier one would not fit)."""
        saved = self._saved()
        if self.store is not None and saved is not None and saved[1] == self.host:
            with contextlib.suppress(OSError), socket.socket() as s:
                s.bind((self.host, saved[2]))
                log.info("starting the Ray head on %s:%d again, over its control store", self.host, saved[2])
                return saved[2]
        if self.store is not None:
            try:
                self.store.clear()
            except Exception as exc:
                raise RuntimeError(
                    f"the Ray head's control store (Redis at {self.store.host}:{self.store.port}) does not "
                    f"answer: {exc}"
                ) from None
        return _free_port(self.host)

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **RAY_ENV, **auth_env(self.auth_token)}
        if self.store is not None:
            env.update(self.store.head_env())
        return env

    async def _spawn(self) -> None:
        """One ``ray start --head --block`` on ``self.port``, returned once its control store answers;
        RuntimeError with its log's tail when it does not."""
        ray_exe = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        # ``ray start`` refuses a port its last cluster used while any process names it (a joined node
        # of this machine does): the address file it checks is its own, not the GCS's state
        (self.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
        argv = [
            ray_exe,
            "start",
            "--head",
            "--block",
            f"--node-ip-address={self.host}",
            f"--port={self.port}",
            *self._node_args(),
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            *(self.store.head_args() if self.store is not None else []),
        ]
        log_path = self.temp_dir / "head.log"
        with log_path.open("ab") as out:
            self._proc = proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self._env(),
                start_new_session=True,  # our SIGTERM reaches it; a Ctrl-C on the terminal does not
            )
        self._adopted_pid = None
        deadline = asyncio.get_running_loop().time() + self.start_timeout
        while not await self._answers():
            if proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
                await stop_ray_start(proc, 5.0)
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the Ray head did not start on {self.address}:\n{tail}")
            await asyncio.sleep(0.2)
        self._record.write_text(json.dumps({"pid": proc.pid, "host": self.host, "port": self.port}))
        log.info("Ray head (pid %d) listening on %s", proc.pid, self.address)

    def _node_args(self) -> list[str]:
        """A head with a control store is a pure control node (nothing of ours is scheduled on it: no
        CPU, no GPU, no ``so_node:``); the machine's node is ``OwnNode``. Without one the head is the
        machine's node too."""
        if self.store is not None:
            return ["--num-cpus=0", "--num-gpus=0"]
        return [f"--resources={json.dumps({f'so_node:{self.node_name}': 1})}"]

    def _start_node(self) -> None:
        """With a control store: this machine's own Ray node, a worker of the head (taken over when an
        earlier control plane left it running), supervised until ``stop``."""
        if self.store is None or self._node_task is not None:
            return
        from superollama.cluster.join import OwnNode  # join.py imports this module

        self.node = node = OwnNode(self.node_name, self.host, self.address, self.temp_dir, self.auth_token)
        node.take_over()
        self._node_stop = asyncio.Event()
        self._node_task = asyncio.create_task(self._run_node(node, self._node_stop), name="ray-own-node")

    @staticmethod
    async def _run_node(node: OwnNode, stop: asyncio.Event) -> None:
        try:
            await node.run(stop)
        except Exception:  # the head goes on; a node that cannot run says why once
            log.exception("this machine's Ray node stopped being supervised")

    async def _stop_node(self) -> None:
        if self._node_task is None:
            return
        self._node_stop.set()
        await self._node_task
        self._node_task = None

    def _watch(self) -> None:
        if self.store is not None and self._watcher is None:
            self._watcher = asyncio.create_task(self._restart_when_dead(), name="ray-head-watch")

    async def _restart_when_dead(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            pid = self.pid
            if pid is None:
                return
            code = await self._ended()
            if self._stopping:
                return
            down = loop.time()
            log.warning(
                "the Ray head (pid %d) ended (status %s): starting it again on %s over its control store "
                "(Redis namespace %s)",
                pid,
                code,
                self.address,
                self.store.namespace if self.store is not None else "-",
            )
            kill_group(pid)  # what the dead head left (its agents, idle workers): by its process group
            for _ in range(100):  # the old GCS's socket answers until it is reaped (10 s at most)
                if not await self._answers():
                    break
                await asyncio.sleep(0.1)
            delay = self.restart_delay
            while not self._stopping:
                try:
                    await self._spawn()
                    break
                except (RuntimeError, OSError) as exc:  # the watch goes on: the cluster needs its head
                    log.error("%s; trying again in %g s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
            else:
                return
            self.restarts += 1
            self.downtimes.append(loop.time() - down)
            log.warning(
                "the Ray head is back on %s (pid %s) %.1f s after it ended",
                self.address,
                self.pid,
                self.downtimes[-1],
            )

    async def _ended(self) -> int | None:
        """Once the head's process ends: its status (None for a taken-over head: not our child)."""
        if self._proc is not None and self._adopted_pid is None:
            return await self._proc.wait()
        pid = self._adopted_pid
        while pid is not None:
            if not is_ray_start(pid):
                break
            await asyncio.sleep(0.5)  # not our child: nothing to wait on but its /proc entry
        return None

    async def _answers(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 1.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def stop(self, grace: float = 20.0) -> None:
        """Stop the head by its PID (and its watch first); with a control store, empty its namespace:
        a cluster ended on purpose does not come back at the next start."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._stop_node()  # before the head: its raylet then leaves the cluster in order
        if self._adopted_pid is not None:
            await stop_pid(self._adopted_pid, grace)
            self._adopted_pid = None
        elif self._proc is not None:
            await stop_ray_start(self._proc, grace)
        else:
            return
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.clear)
            except Exception as exc:  # the head is stopped: a Redis out of reach only keeps stale keys
                log.warning("could not delete the Ray head's keys in Redis: %s", exc)
            self._record.unlink(missing_ok=True)


async def stop_ray_start(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to a ``ray start --block`` child (it stops the Ray processes it started), SIGKILL to its
    process group after ``grace`` seconds."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def is_ray_start(pid: int, *, address: str | None = None) -> bool:
    """Whether ``pid`` is a ``ray start --head --block`` (with ``address``: a ``ray start --block``
    joining the head there) — never signal a PID reused by something else."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    which = b"--head" if address is None else f"--address={address}".encode()
    return b"start" in cmdline and which in cmdline and b"--block" in cmdline


def kill_group(pgid: int) -> None:
    """SIGKILL to what is left in a dead ``ray start``'s process group (it led it: its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def stop_pid(pid: int, grace: float, *, address: str | None = None) -> None:
    """``stop_ray_start`` for a ``ray start --block`` that is not our child (``is_ray_start``)."""
    if not is_ray_start(pid, address=address):
        return
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        await asyncio.to_thread(proc.wait, grace)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
