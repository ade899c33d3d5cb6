"""The two kinds of Ray actor the control plane creates on the nodes (plain classes; ``cluster.agent``
wraps them with ``ray.remote`` and its options).

``InstanceActor`` — one per instance, detached and named after the instance, pinned to its node. It runs
today's runtime child on that node with the runtime's own ``start`` (``runtimes/process.py``: a start-up
handshake, ``/health``), binding the node's address rather than loopback, and answers ``node_ip:port``.
The child asks the kernel to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``) and checks its parent's
PID: the parent is this actor's process, so ``ray.kill`` of the actor, or the death of the node's raylet
(Ray's workers exit with it), ends the model process too. An async actor runs every method on one event
loop thread for its whole life, which is the thread PDEATHSIG follows. ``start`` is idempotent: a
re-adopting control plane that calls it again gets the running child back, never a second one.

``NodeActor`` — one per node, detached, named ``node:NAME``: reports what Ray does not know (RAM and each
GPU's memory through ``agent/inventory.py``, the runtimes installed there), and holds the node's blobs
(``cluster/blobs.py``): it serves chunks of them to other nodes (``read_chunk``: each chunk is an object of
Ray's store, moved node to node by Ray's object manager) and fetches the ones it lacks (``fetch_blob``,
pulling from another node's actor). The control plane has one more, unnamed and owned by it, on its own
node: its origin, serving the store the control plane pulled into.

``InstanceActor.start`` also answers the memory the model process uses once loaded (``observed``): its
resident set (with its children) and, where NVML reports it, the GPU memory of its processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import ray

from superollama.agent.inventory import Inventory
from superollama.cluster.blobs import NODE_STORE_ENV, BlobSource, NodeBlobs
from superollama.core import InstanceHandle, InstanceSpec, Runtime

__all__ = ["InstanceActor", "NodeActor", "installed_runtimes", "observe_memory"]

# runtime name → the module its worker imports (the runtime is "present" on a node that has it)
_RUNTIME_MODULES = {"llamacpp": "xllamacpp", "transformers": "transformers", "vllm": "vllm"}


def installed_runtimes() -> list[str]:
    """The runtimes whose backend library this node's Python can import."""
    return sorted(n for n, mod in _RUNTIME_MODULES.items() if importlib.util.find_spec(mod) is not None)


class InstanceActor:
    def __init__(self, runtime: Runtime, spec: InstanceSpec) -> None:
        self._runtime = runtime
        self._spec = spec
        self._handle: InstanceHandle | None = None
        self._lock = asyncio.Lock()
        self._started = asyncio.Event()

    async def start(self) -> dict[str, Any]:
        async with self._lock:
            if self._handle is None:
                if hasattr(self._runtime, "host"):
                    self._runtime.host = ray.util.get_node_ip_address()
                self._handle = await self._runtime.start(self._spec)
                self._started.set()
            return await self._answer(self._handle)

    async def info(self) -> dict[str, Any] | None:
        """What ``start`` answered, or None when no child runs (not started, or it has exited)."""
        handle = self._handle
        return await self._answer(handle) if handle is not None and handle.alive() else None

    async def _answer(self, handle: InstanceHandle) -> dict[str, Any]:
        described = self._describe(handle)
        described["observed"] = await asyncio.to_thread(observe_memory, handle.pid)
        return described

    async def wait(self) -> int:
        """The child's exit code, once it exits (the control plane's crash watch)."""
        await self._started.wait()  # a watch placed before the start finished
        assert self._handle is not None
        return await self._handle.wait()

    async def stop(self, timeout: float) -> None:
        if self._handle is not None:
            await self._handle.stop(timeout)

    @staticmethod
    def _describe(handle: InstanceHandle) -> dict[str, Any]:
        return {
            "pid": handle.pid,
            "endpoint": handle.endpoint.base_url,
            "provider": handle.endpoint.provider,
            "served_name": handle.endpoint.served_name,
            "node_ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(),
        }


def observe_memory(pid: int) -> dict[str, int | None]:
    """``{"rss": bytes, "gpu": bytes or None}`` the process ``pid`` and its children use now: their
    resident sets, and their GPU memory where NVML reports it (None without NVML)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"rss": None, "gpu": None}
    rss = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss
    return {"rss": rss, "gpu": _gpu_memory({p.pid for p in procs})}


def _gpu_memory(pids: set[int]) -> int | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        used = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids and proc.usedGpuMemory:
                    used += int(proc.usedGpuMemory)
        return used
    except pynvml.NVMLError:
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


class NodeActor:
    """``origin``: the control plane's blob server, reading its files (no store of the node's own)."""

    def __init__(self, *, origin: bool = False) -> None:
        self._inventory = Inventory()
        root = None if origin else os.environ.get(NODE_STORE_ENV) or None
        self._blobs = NodeBlobs(Path(root) if root else None)

    async def inventory(self) -> dict[str, Any]:
        capacity, usage = await asyncio.gather(
            asyncio.to_thread(self._inventory.capacity), asyncio.to_thread(self._inventory.usage)
        )
        return {
            "capacity": capacity,
            "usage": usage,
            "runtimes": installed_runtimes(),
            "store": self._blobs.report(),
        }

    async def blobs(self) -> dict[str, Any]:
        """The node's store: its root (None: it reads the control plane's files) and its transfers."""
        return self._blobs.report()

    async def blob_local(self, digest: str, shared: str | None = None) -> tuple[str, int] | None:
        """(path, size) of a blob on this node, or None."""
        return await asyncio.to_thread(self._blobs.local, digest, shared)

    async def read_chunk(self, digest: str, shared: str | None, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._blobs.read, digest, shared, offset, length)

    async def folder_local(self, key: str, entries: Sequence[tuple[str, str, int]]) -> str | None:
        """The complete folder ``models/<key>`` of this node's store, or None."""
        return await asyncio.to_thread(self._blobs.folder, key, entries)

    async def assemble_folder(
        self, key: str, entries: Sequence[tuple[str, str, int]], summary: dict[str, Any]
    ) -> str:
        """Build a folder version's folder from its blobs, each already here and verified (``fetch_blob``);
        its path. Renamed into ``models/`` in one step, so no instance sees half of it."""
        return await asyncio.to_thread(self._blobs.assemble, key, entries, summary)

    async def fetch_blob(self, digest: str, size: int, sources: Sequence[tuple[str, Any, str | None]]) -> str:
        """Copy a blob into this node's store from the first of ``sources`` — ``(node name, its
        NodeActor, the file for a node without a store of its own)`` — that can send it; its path here."""
        readers = [BlobSource(name, _chunk_reader(actor, digest, shared)) for name, actor, shared in sources]
        return str(await self._blobs.fetch(digest, size, readers))


def _chunk_reader(actor: Any, digest: str, shared: str | None) -> Any:
    async def read(offset: int, length: int) -> bytes:
        data: bytes = await actor.read_chunk.remote(digest, shared, offset, length)
        return data

    return read
