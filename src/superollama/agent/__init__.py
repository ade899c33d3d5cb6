"""Node agent: runs runtimes' instances on this node and reports their state."""

from superollama.agent.agent import AgentConfig, LiveInstance, LocalAgent

__all__ = ["AgentConfig", "LiveInstance", "LocalAgent"]
