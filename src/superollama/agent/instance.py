"""What the node agent tracks per instance, its configuration, and ``NodeAgent``: the seam the control
plane drives an agent through.

Two implementations, one design: ``LocalAgent`` (in this process: a plain ``serve``, and the agent
process of ``serve --workers N``) and ``workers.remote_agent.RemoteAgent`` (the primary worker's client
of that agent process, over a Unix socket). The controller, the swapper and the deployments only see
``NodeAgent``; the instances they get back are ``LiveInstance`` values either way (a remote one carries a
handle that only knows the process' pid and endpoint).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from superollama.core import Artifact, EventRecord, InstanceHandle, InstanceRecord, InstanceState

__all__ = ["AgentConfig", "Ending", "LiveInstance", "MovesInstances", "NodeAgent"]

Ending = Literal["running", "crashed", "stopped"]


@dataclass(frozen=True)
class AgentConfig:
    node: str = "local"
    keep_alive: float = 300.0
    load_timeout: float = 120.0
    stop_timeout: float = 10.0
    drain_timeout: float = 30.0
    max_pending_loads: int = 512
    reap_interval: float = 1.0


@dataclass(eq=False)
class LiveInstance:
    """A running instance as the agent tracks it (mutable accounting, immutable identity)."""

    id: str
    version: str
    runtime: str
    device: str
    handle: InstanceHandle
    started_at: datetime
    load_seconds: float
    last_used: float
    in_flight: int = 0
    pending: int = 0  # ensure() callers handed this instance that have not acquired it yet
    keep_alive: float | None = None  # per-instance override of the node default
    state: InstanceState = InstanceState.READY
    idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set while nothing is in flight
    _watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def pid(self) -> int:
        return self.handle.pid

    @property
    def quiet(self) -> bool:
        """Nothing in flight and nobody about to send: a drain may stop it."""
        return self.in_flight <= 0 and self.pending <= 0

    def record(self, node: str) -> InstanceRecord:
        """Its registry row; ``node`` unless its handle says where it runs (a cluster's instances)."""
        return InstanceRecord(
            id=self.id,
            version=self.version,
            node=getattr(self.handle, "node", None) or node,
            runtime=self.runtime,
            state=self.state,
            device=self.device,
            pid=self.handle.pid,
            endpoint=self.handle.endpoint.base_url,
            started_at=self.started_at,
        )


class NodeAgent(Protocol):
    """What the control plane asks of the node agent (``LocalAgent`` documents each method)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def on_event(self, listener: Callable[[EventRecord], None]) -> None: ...

    def subscribe(self, listener: Callable[[], None]) -> None: ...

    def instances(self) -> list[LiveInstance]: ...

    def instance_for(self, version: str) -> LiveInstance | None: ...

    def instances_of(self, version: str) -> list[LiveInstance]: ...

    def replicas(self, version: str) -> int: ...

    def loading(self, version: str) -> bool: ...

    def in_flight(self, instance_id: str) -> int: ...

    def acquire(self, instance_id: str) -> None: ...

    def release(self, instance_id: str) -> None: ...

    def set_keep_alive(self, version: str, seconds: float | None) -> None: ...

    def expires_in(self, version: str) -> float | None: ...

    async def runtime_for(self, artifact: Artifact) -> str: ...

    async def usage(self) -> dict[str, object]: ...

    async def ensure(
        self, artifact: Artifact, runtime: str, *, device: str = "cpu", replicas: int | None = None
    ) -> LiveInstance: ...

    async def scale(
        self, artifact: Artifact, runtime: str, replicas: int, *, device: str = "cpu", start: bool = True
    ) -> list[LiveInstance]: ...

    async def unload(
        self, version: str, *, reason: str = "requested", drain: float | None = None
    ) -> bool: ...

    async def stop_version(
        self, version: str, *, reason: str, drain: float | None = None, instance: str | None = None
    ) -> int | None: ...

    async def ended(self, instance_id: str, *, within: float = 2.0) -> Ending: ...


@runtime_checkable
class CopiesVersions(Protocol):
    """An agent over several nodes can put a version's files in a node's own store ahead of its first
    start there (``pull --node``). ``check_copy_node`` refuses a node that is unknown (404) or not up
    (409) before anything is pulled; ``copy_to_node`` says where the files are and what it copied.
    ``several_nodes``: False for an agent that may run one node only (then its node has the files)."""

    @property
    def several_nodes(self) -> bool: ...

    async def check_copy_node(self, node: str) -> None: ...

    async def copy_to_node(self, artifact: Artifact, node: str) -> dict[str, Any]: ...


@runtime_checkable
class MovesInstances(Protocol):
    """An agent over several nodes (``cluster.agent.RayAgent``) can move a running instance to another
    node: a new one starts there and becomes ready, then the old one drains and stops. The answer says
    which instances and nodes, and how long it took."""

    async def move_instance(
        self, artifact: Artifact, runtime: str, node: str, *, instance: str | None = None
    ) -> dict[str, Any]: ...
