"""Many machines on Ray (the cluster extra): the only package that imports Ray.

``cluster_agent`` builds the control plane's ``NodeAgent`` for ``serve --cluster``: a ``RayAgent``
(``cluster.agent``) joined to ``cluster_address``, or to a head it starts (``cluster.head``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from superollama.agent.instance import AgentConfig
from superollama.cluster.control_store import RedisStore, auth_env, default_namespace, ray_auth_token
from superollama.cluster.head import RayHead, ray_env_defaults
from superollama.core import Runtime
from superollama.errors import InvalidRequest
from superollama.registry import Registry
from superollama.settings import Settings

if TYPE_CHECKING:
    from superollama.cluster.agent import RayAgent

__all__ = ["RayHead", "cluster_agent", "own_head"]


def own_head(settings: Settings) -> RayHead:
    """The head ``serve --cluster`` starts: ``InvalidRequest`` saying why for a Redis URL Ray cannot
    honour."""
    store = None
    url = settings.cluster_redis_url or settings.redis_url
    if url:
        namespace = settings.cluster_store_namespace or default_namespace(settings.home)
        try:
            store = RedisStore.from_url(url, namespace)
        except ValueError as exc:  # a setting: said as such, not as an internal error
            raise InvalidRequest(f"invalid settings: {exc}", param="cluster_redis_url") from None
    token = None
    if settings.cluster_auth:
        token = settings.home / "ray-auth-token"
        ray_auth_token(token)  # made once, before anything reads it
    return RayHead(
        settings.cluster_host, settings.node_name, settings.home / "ray", store=store, auth_token=token
    )


def cluster_agent(
    settings: Settings, registry: Registry, runtimes: Mapping[str, Runtime], config: AgentConfig
) -> RayAgent:
    """The agent of ``serve --cluster``; it starts (and on close stops) a head when no address is set,
    with its control store on Redis when one is configured and Ray's token authentication unless turned
    off (``cluster/control_store.py``). Ray reads some of its environment when it is imported: ours is
    set first (this process is the head's driver: the same token file)."""
    ray_env_defaults()
    head = None
    if not settings.cluster_address:
        head = own_head(settings)
        os.environ.update(auth_env(head.auth_token))
    from superollama.cluster.agent import RayAgent

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
