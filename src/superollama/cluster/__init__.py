"""Many machines on Ray (the cluster extra): the only package that imports Ray.

``cluster_agent`` builds the control plane's ``NodeAgent`` for ``serve --cluster``: a ``RayAgent``
(``cluster.agent``) joined to ``cluster_address``, or to a head it starts (``cluster.head``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from superollama.agent.instance import AgentConfig
from superollama.cluster.head import RayHead, ray_env_defaults
from superollama.core import Runtime
from superollama.registry import Registry
from superollama.settings import Settings

if TYPE_CHECKING:
    from superollama.cluster.agent import RayAgent

__all__ = ["RayHead", "cluster_agent"]


def cluster_agent(
    settings: Settings, registry: Registry, runtimes: Mapping[str, Runtime], config: AgentConfig
) -> RayAgent:
    """The agent of ``serve --cluster``; it starts (and on close stops) a head when no address is set.
    Ray reads some of its environment when it is imported: ours is set first."""
    ray_env_defaults()
    from superollama.cluster.agent import RayAgent

    head = None
    if not settings.cluster_address:
        head = RayHead(settings.cluster_host, settings.node_name, settings.home / "ray")
    return RayAgent(
        registry,
        runtimes,
        config,
        address=settings.cluster_address or "",
        head=head,
        namespace=settings.cluster_namespace,
        policy=settings.placement_policy,
        place_timeout=settings.placement_timeout,
        ready_timeout=settings.ready_timeout,
        node_ip_address=settings.cluster_host,
    )
