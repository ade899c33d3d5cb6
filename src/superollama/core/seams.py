"""The seams the rooms plug into. Keep them few and typed; implementations register by ``name``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

from superollama.core.types import Artifact, Endpoint, InstanceRecord, InstanceSpec

__all__ = ["InstanceHandle", "NodeAwareRuntime", "Provider", "Runtime"]


@runtime_checkable
class InstanceHandle(Protocol):
    """A running backend process for one instance, as its runtime started it."""

    instance_id: str
    pid: int
    endpoint: Endpoint

    def alive(self) -> bool:
        """True while the process runs."""
        ...

    async def wait(self) -> int:
        """Return the exit code once the process has exited (for crash detection)."""
        ...

    async def stop(self, timeout: float) -> None:
        """Ask the process to exit (SIGTERM), SIGKILL it after ``timeout`` seconds; idempotent."""
        ...


class Runtime(Protocol):
    """How to start, stop and health-check a backend on a node for one model version."""

    name: ClassVar[str]  # "llamacpp", "transformers", "vllm" …
    provider: ClassVar[str]  # the wire protocol it speaks: "openai", "ollama" …

    def accepts(self, artifact: Artifact) -> bool:
        """Whether this runtime can serve the artifact's format."""
        ...

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        """Start a process and return once it is healthy; raise ``ModelLoadFailed`` with the reason."""
        ...

    async def adopt(self, record: InstanceRecord) -> InstanceHandle | None:
        """Deal with a process left by an earlier agent: return a handle to keep it, or stop it and return
        None (clean replacement)."""
        ...


@runtime_checkable
class NodeAwareRuntime(Protocol):
    """A runtime that serves only on some nodes (a GPU, a package installed): asked before it is chosen.
    A runtime without ``suits`` suits every node."""

    async def suits(self, inventory: Mapping[str, Any]) -> bool:
        """Whether this node (its ``NodeRecord.inventory``: cpus, memory, devices) can run this runtime."""
        ...


class Provider(Protocol):
    """Speaks one backend protocol over HTTP for discovery and health (requests are relayed by the
    data plane, translated where protocols differ)."""

    kind: ClassVar[str]  # "openai", "ollama", "tgi"

    def relay_base(self, url: str) -> str:
        """The base URL OpenAI-protocol requests are relayed to (``/v1/...`` is appended)."""
        ...

    async def models(self, ep: Endpoint) -> list[str]:
        """The model names the backend serves now; raises ``UpstreamError`` when it cannot be reached."""
        ...
