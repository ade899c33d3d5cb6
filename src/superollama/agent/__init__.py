"""Node agent: runs runtimes' instances on this node and reports their state."""

from superollama.agent.agent import LocalAgent
from superollama.agent.instance import (
    AgentConfig,
    CopiesVersions,
    Ending,
    LiveInstance,
    MovesInstances,
    NodeAgent,
)
from superollama.agent.inventory import GpuUsage, Inventory

__all__ = [
    "AgentConfig",
    "CopiesVersions",
    "Ending",
    "GpuUsage",
    "Inventory",
    "LiveInstance",
    "LocalAgent",
    "MovesInstances",
    "NodeAgent",
]
