"""This node's agent configuration, from ``Settings`` (the in-process agent of a plain ``serve`` and the agent
process of ``serve --workers N`` build it the same way; their runtimes come from the plugins)."""

from __future__ import annotations

from superollama.agent.instance import AgentConfig
from superollama.settings import Settings

__all__ = ["agent_config"]


def agent_config(settings: Settings) -> AgentConfig:
    return AgentConfig(
        node=settings.node_name,
        keep_alive=settings.keep_alive,
        load_timeout=settings.load_timeout,
        stop_timeout=settings.stop_timeout,
        drain_timeout=settings.drain_timeout,
        max_pending_loads=settings.max_pending_loads,
    )
