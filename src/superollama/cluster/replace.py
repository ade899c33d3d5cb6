"""A running version whose placement constraint changed: its instances that no longer meet it move.

``deploy chat --target V=100 --labels zone=a`` while V runs on a ``zone=b`` node (or ``--node``, or
``--device`` that the instance's device is not) would otherwise leave it there until it restarts. So
``RayAgent.scale`` with a new constraint calls ``replace_misplaced``: for each ready instance of the
version that the constraint no longer admits, one by one, the order of a move (``cluster/moves.py``):

1. start one more instance, placed by the new constraint (the 503 that says why when nothing fits: the
   old instance keeps serving then);
2. once it is ready and routable, drain the old one (its requests in flight finish) and stop it.

Spread is not judged here (it is an order of preference, not a filter): only ``node``, ``labels`` and
``device`` make an instance misplaced.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from superollama.agent.instance import LiveInstance
from superollama.agent.placement import NodeView
from superollama.core import Artifact, InstanceState
from superollama.core.placement import PlacementConstraint

if TYPE_CHECKING:
    from superollama.cluster.agent import RayAgent

__all__ = ["admits", "replace_misplaced"]

log = logging.getLogger("superollama.cluster")


def admits(constraint: PlacementConstraint, node: NodeView | None, device: str) -> bool:
    """Whether an instance on ``node``'s ``device`` meets ``constraint`` (a node gone: no)."""
    if node is None:
        return False
    if constraint.node is not None and node.name != constraint.node:
        return False
    if any(node.labels.get(k) != v for k, v in constraint.labels):
        return False
    on_gpu = device.startswith("cuda")
    return not ((constraint.device == "gpu" and not on_gpu) or (constraint.device == "cpu" and on_gpu))


async def replace_misplaced(agent: RayAgent, artifact: Artifact, runtime: str) -> list[str]:
    """Move the version's instances the constraint no longer admits (see the module's docstring); the
    ids of the instances stopped."""
    version = artifact.name
    constraint = agent.placement_of(version)
    nodes = await agent.refresh_nodes()
    views = {name: n.view for name, n in nodes.items()}
    ready = [i for i in agent.instances_of(version) if i.state is InstanceState.READY]
    misplaced = [i for i in ready if not admits(constraint, views.get(_node_of(i)), i.device)]
    moved = []
    for inst in misplaced:
        new = await agent.start_extra(artifact, runtime, device=inst.device)
        log.info(
            "%s: %s on %s no longer meets its placement (%s); %s on %s replaces it",
            version,
            inst.id,
            _node_of(inst),
            constraint.describe(),
            new.id,
            _node_of(new),
        )
        await agent.stop_version(version, reason="placement changed", instance=inst.id)
        moved.append(inst.id)
    return moved


def _node_of(inst: LiveInstance) -> str:
    return str(getattr(inst.handle, "node", "") or "")
