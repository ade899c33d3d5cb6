"""Where an instance goes: a node and a device, chosen by memory (pure: no Ray, no I/O).

The control plane calls ``place`` with what it knows of each node (``NodeView``: cordon, labels,
runtimes installed, each device's total and free memory) and the instance's estimate per device kind
(``agent/estimate.py``). In order:

1. **Filters**: a cordoned node takes nothing new; the request's labels must all match; the runtime must
   be installed there; a request pinned to a node (``--node``) only looks there.
2. **Devices**: a GPU request looks at the ``cuda:N`` devices; a CPU request at ``cpu``; ``any`` looks at
   the GPUs first and falls back to the CPU when no GPU fits, if ``cpu_fallback`` allows.
3. **Policy**: ``binpack`` takes the device left with the least free memory after the instance (big holes
   stay free for big models); ``spread`` takes the node with the fewest of our instances, then the most
   free memory (replicas on different machines).

When nothing fits, ``DoesNotFit`` names the best candidate (the most free memory among the devices that
passed the filters) and the numbers, or the filter that emptied the list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from superollama.agent.estimate import MemoryEstimate
from superollama.errors import ModelLoadFailed

__all__ = ["DeviceView", "DoesNotFit", "NodeView", "Placement", "PlacementRequest", "place"]

DeviceKind = Literal["cpu", "gpu", "any"]
Policy = Literal["binpack", "spread"]

_GIB = 1024**3


@dataclass(frozen=True)
class DeviceView:
    """One device of a node: ``cpu`` (its RAM) or ``cuda:N`` (its memory), in bytes."""

    name: str
    total: int
    free: int

    @property
    def kind(self) -> str:
        return "cpu" if self.name == "cpu" else self.name.split(":", 1)[0]


@dataclass(frozen=True)
class NodeView:
    name: str
    devices: tuple[DeviceView, ...]
    runtimes: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    cordoned: bool = False
    instances: int = 0  # ours running there now (for spread)


@dataclass(frozen=True)
class PlacementRequest:
    version: str
    runtime: str
    device: DeviceKind = "any"
    labels: Mapping[str, str] = field(default_factory=dict)
    node: str | None = None  # pinned (``--node``)
    policy: Policy = "binpack"
    cpu_fallback: bool = True


@dataclass(frozen=True)
class Placement:
    node: str
    device: str
    estimate: MemoryEstimate
    free_before: int

    @property
    def free_after(self) -> int:
        return self.free_before - self.estimate.total


class DoesNotFit(ModelLoadFailed):
    """No device can take the instance (503): the message names the best candidate and the numbers."""


def place(
    nodes: list[NodeView], request: PlacementRequest, estimates: Mapping[str, MemoryEstimate]
) -> Placement:
    """The node and device for one instance of ``request.version`` (see the module's docstring).

    ``estimates``: the instance's estimate per device kind (``"cpu"``, ``"cuda"``)."""
    eligible, refused = _filter(nodes, request)
    if not eligible:
        why = "; ".join(refused) or "no node is known"
        raise DoesNotFit(f"no node can run {request.version!r} ({request.runtime}): {why}")
    best: Placement | None = None
    for kinds in _tiers(request):
        choice, best_here = _choose(eligible, kinds, request.policy, estimates)
        if choice is not None:
            return choice
        if best_here is not None and (best is None or best_here.free_before > best.free_before):
            best = best_here
    if best is None:
        wanted = "a GPU" if request.device == "gpu" else "a device"
        names = ", ".join(n.name for n in eligible)
        raise DoesNotFit(f"{request.version!r} needs {wanted}; none on the eligible nodes ({names})")
    need = best.estimate
    raise DoesNotFit(
        f"{request.version!r} does not fit anywhere: it needs {_gib(need.total)} "
        f"(weights {_gib(need.weights)}, KV cache {_gib(need.kv_cache)}, compute {_gib(need.compute)}, "
        f"overhead {_gib(need.overhead)}); the best candidate is {best.node} {best.device} with "
        f"{_gib(best.free_before)} free"
    )


def _filter(nodes: list[NodeView], request: PlacementRequest) -> tuple[list[NodeView], list[str]]:
    eligible, refused = [], []
    for node in sorted(nodes, key=lambda n: n.name):
        if request.node is not None and node.name != request.node:
            continue
        if node.cordoned:
            refused.append(f"{node.name} is cordoned")
        elif any(node.labels.get(k) != v for k, v in request.labels.items()):
            want = ",".join(f"{k}={v}" for k, v in sorted(request.labels.items()))
            refused.append(f"{node.name} lacks labels {want}")
        elif request.runtime not in node.runtimes:
            refused.append(f"{node.name} has no {request.runtime} runtime")
        else:
            eligible.append(node)
    if request.node is not None and not eligible and not refused:
        refused.append(f"node {request.node!r} is not in the cluster")
    return eligible, refused


def _tiers(request: PlacementRequest) -> list[frozenset[str]]:
    if request.device == "cpu":
        return [frozenset({"cpu"})]
    if request.device == "gpu":
        return [frozenset({"cuda"})]
    return [frozenset({"cuda"}), frozenset({"cpu"})] if request.cpu_fallback else [frozenset({"cuda"})]


def _choose(
    nodes: list[NodeView], kinds: frozenset[str], policy: Policy, estimates: Mapping[str, MemoryEstimate]
) -> tuple[Placement | None, Placement | None]:
    """(the chosen placement or None, the roomiest device of these kinds whether it fits or not)."""
    fits: list[tuple[NodeView, Placement]] = []
    roomiest: Placement | None = None
    for node in nodes:
        for dev in node.devices:
            need = estimates.get(dev.kind)
            if dev.kind not in kinds or need is None:
                continue
            need = need.on_device(dev.total)  # a runtime that takes a share of the device (vLLM on a GPU)
            option = Placement(node=node.name, device=dev.name, estimate=need, free_before=dev.free)
            if roomiest is None or option.free_before > roomiest.free_before:
                roomiest = option
            if option.free_after >= 0:
                fits.append((node, option))
    if not fits:
        return None, roomiest
    if policy == "spread":
        _, chosen = min(fits, key=lambda f: (f[0].instances, -f[1].free_after, f[1].node, f[1].device))
    else:
        _, chosen = min(fits, key=lambda f: (f[1].free_after, f[1].node, f[1].device))
    return chosen, roomiest


def _gib(n: int) -> str:
    return f"{n / _GIB:.2f} GiB"
