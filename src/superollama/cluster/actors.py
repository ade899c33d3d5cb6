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
GPU's memory through ``agent/inventory.py``, the runtimes installed there).
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import ray

from superollama.agent.inventory import Inventory
from superollama.core import InstanceHandle, InstanceSpec, Runtime

__all__ = ["InstanceActor", "NodeActor", "installed_runtimes"]

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
            return self._describe(self._handle)

    async def info(self) -> dict[str, Any] | None:
        """What ``start`` answered, or None when no child runs (not started, or it has exited)."""
        handle = self._handle
        return self._describe(handle) if handle is not None and handle.alive() else None

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


class NodeActor:
    def __init__(self) -> None:
        self._inventory = Inventory()

    async def inventory(self) -> dict[str, Any]:
        capacity, usage = await asyncio.gather(
            asyncio.to_thread(self._inventory.capacity), asyncio.to_thread(self._inventory.usage)
        )
        return {"capacity": capacity, "usage": usage, "runtimes": installed_runtimes()}
