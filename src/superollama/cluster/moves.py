"""Moving a running instance to another node (``superollama mv NAME --to-node NODE``) with no request lost.

The order is the one a rollout keeps, for one instance:

1. **Check** the target: a node the registry does not know is a 404; one that is cordoned, draining, down
   or not in the cluster now is a 409; the version must run somewhere else than there (409 otherwise).
2. **Start** one more instance of the version pinned to the target (``InstanceSpec.options["node"]``):
   placement checks that it fits there (else the 503 that names the numbers), the target's agent gets
   the blob files first (``cluster/blobs.py``, node to node), and the instance joins routing once ready;
   until then the old instance serves alone.
3. **Drain** the old instance: it leaves routing (the balancer sends everything to the new one), its
   requests in flight — streams included — finish (bounded by the agent's drain timeout), then its actor
   and model process stop. The version keeps its count of replicas throughout, plus one during the move.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superollama.agent.instance import LiveInstance
from superollama.core import Artifact, InstanceState
from superollama.errors import Conflict, NotFound

if TYPE_CHECKING:
    from superollama.cluster.agent import RayAgent

__all__ = ["MoveOutcome", "move_instance"]

_NOT_PLACEABLE = ("cordoned", "draining", "down", "removed")


@dataclass(frozen=True)
class MoveOutcome:
    version: str
    instance: str  # the new one, on ``node``
    node: str
    from_instance: str
    from_node: str
    seconds: float  # from the call to the old instance stopped
    ready_seconds: float  # until the new instance was ready (and routable)
    cut: int  # requests the drain bound cut short (0 unless a request outlived it)

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "instance": self.instance,
            "node": self.node,
            "from": {"instance": self.from_instance, "node": self.from_node},
            "seconds": round(self.seconds, 3),
            "ready_seconds": round(self.ready_seconds, 3),
            "cut": self.cut,
        }


async def move_instance(
    agent: RayAgent, artifact: Artifact, runtime: str, node: str, *, instance: str | None = None
) -> MoveOutcome:
    """Move one instance of ``artifact``'s version (``instance``, or the oldest one not on ``node``) to
    ``node``; see the module's docstring."""
    t0 = time.perf_counter()
    version = artifact.name
    await check_node(agent, node)
    old = _source(agent.instances_of(version), version, node, instance)
    from_node = str(getattr(old.handle, "node", "") or "")
    new = await agent.start_extra(artifact, runtime, device=old.device, options={"node": node})
    ready = time.perf_counter() - t0
    cut = await agent.stop_version(version, reason=f"moved to node {node}", instance=old.id) or 0
    return MoveOutcome(version, new.id, node, old.id, from_node, time.perf_counter() - t0, ready, cut)


async def check_node(agent: RayAgent, node: str) -> None:
    """``node`` is known, up and takes new work: 404 or 409 otherwise."""
    known = {n.name: n for n in await agent.registry.nodes.list()}
    record = known.get(node)
    if record is None:
        names = ", ".join(sorted(known)) or "none"
        raise NotFound(f"node {node!r} not found (nodes: {names})", param="node")
    if record.state in _NOT_PLACEABLE:
        raise Conflict(f"node {node!r} is {record.state}: nothing new is placed there", param="node")
    if node not in await agent.refresh_nodes():
        raise Conflict(f"node {node!r} is not in the cluster now (down)", param="node")


def _source(running: list[LiveInstance], version: str, node: str, wanted: str | None) -> LiveInstance:
    ready = [i for i in running if i.state is InstanceState.READY]
    if wanted is not None:
        found = [i for i in ready if i.id == wanted]
        if not found:
            raise NotFound(f"{version} has no running instance {wanted!r}", param="instance")
        if getattr(found[0].handle, "node", None) == node:
            raise Conflict(f"instance {wanted} of {version} runs on node {node!r} already", param="node")
        return found[0]
    if not ready:
        raise Conflict(f"{version} has no running instance to move (it starts on its next request)")
    elsewhere = [i for i in ready if getattr(i.handle, "node", None) != node]
    if not elsewhere:
        raise Conflict(f"every instance of {version} runs on node {node!r} already", param="node")
    return elsewhere[0]
