"""Which runtime serves a version on this node: the first, in the plugins' order, whose ``accepts`` takes
the artifact and that suits the node's inventory (``NodeAwareRuntime``) — no format → runtime table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from superollama.core import Artifact, NodeAwareRuntime, Runtime
from superollama.errors import ModelLoadFailed

__all__ = ["RuntimeChoice"]


class RuntimeChoice:
    def __init__(
        self, runtimes: Mapping[str, Runtime], node: str, inventory: Mapping[str, Any] | None = None
    ) -> None:
        self._runtimes = runtimes
        self._node = node
        self.inventory = inventory  # the node's capacity (``agent/inventory.py``), set when the agent starts
        self._suits: dict[str, bool] = {}  # by runtime name: the inventory of a node does not change

    async def _suits_node(self, runtime: Runtime) -> bool:
        if not isinstance(runtime, NodeAwareRuntime):
            return True
        known = self._suits.get(runtime.name)
        if known is None:
            known = self._suits[runtime.name] = await runtime.suits(self.inventory or {})
        return known

    async def runtime_for(self, artifact: Artifact) -> str:
        """The name of the runtime that serves ``artifact`` here; ``ModelLoadFailed`` when none does."""
        accepting = [r for r in self._runtimes.values() if r.accepts(artifact)]
        for runtime in accepting:
            if await self._suits_node(runtime):
                return runtime.name
        if accepting:
            names = ", ".join(r.name for r in accepting)
            raise ModelLoadFailed(
                f"no runtime for {artifact.name!r} suits node {self._node!r} ({names} accept its "
                f"{artifact.format!r} files but cannot run here)"
            )
        raise ModelLoadFailed(f"no runtime on node {self._node!r} serves the {artifact.format!r} format")
