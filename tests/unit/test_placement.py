"""Placement by memory (agent/placement.py): filters, binpack and spread, CPU fallback, and the message
that names the best candidate when nothing fits."""

from __future__ import annotations

import pytest

from superollama.agent.estimate import MemoryEstimate
from superollama.agent.placement import (
    DeviceView,
    DoesNotFit,
    NodeView,
    PlacementRequest,
    place,
)
from superollama.errors import ModelLoadFailed

GIB = 1024**3
NEED = {
    "cpu": MemoryEstimate(weights=4 * GIB, kv_cache=1 * GIB, compute=0, overhead=0, basis="t"),
    "cuda": MemoryEstimate(weights=4 * GIB, kv_cache=1 * GIB, compute=0, overhead=1 * GIB, basis="t"),
}
RT = frozenset({"llamacpp"})


def node(name: str, cpu_free: float, *gpus_free: float, **kw: object) -> NodeView:
    devices = [DeviceView("cpu", 64 * GIB, int(cpu_free * GIB))]
    devices += [DeviceView(f"cuda:{i}", 24 * GIB, int(f * GIB)) for i, f in enumerate(gpus_free)]
    return NodeView(name=name, devices=tuple(devices), runtimes=kw.pop("runtimes", RT), **kw)  # type: ignore[arg-type]


def req(**kw: object) -> PlacementRequest:
    return PlacementRequest(version="llama:8b", runtime="llamacpp", **kw)  # type: ignore[arg-type]


def test_binpack_takes_the_tightest_gpu_that_fits() -> None:
    nodes = [node("a", 50, 20, 7), node("b", 50, 12)]
    got = place(nodes, req(), NEED)
    assert (got.node, got.device) == ("a", "cuda:1")  # 7 GiB free, 6 needed: 1 left
    assert got.free_after == 1 * GIB


def test_spread_takes_the_node_with_fewest_instances_then_most_free() -> None:
    nodes = [node("a", 50, 20, instances=1), node("b", 50, 12), node("c", 50, 18)]
    got = place(nodes, req(policy="spread"), NEED)
    assert (got.node, got.device) == ("c", "cuda:0")


def test_cpu_fallback_when_no_gpu_fits_and_only_if_allowed() -> None:
    nodes = [node("a", 30, 3), node("b", 10)]
    got = place(nodes, req(), NEED)
    assert (got.node, got.device) == ("b", "cpu")  # binpack on the CPU tier: b leaves 5 GiB
    with pytest.raises(DoesNotFit, match=r"best candidate is a cuda:0 with 3\.00 GiB free"):
        place(nodes, req(cpu_fallback=False), NEED)


def test_explicit_device_kinds() -> None:
    nodes = [node("a", 30, 20)]
    assert place(nodes, req(device="cpu"), NEED).device == "cpu"
    assert place(nodes, req(device="gpu"), NEED).device == "cuda:0"
    with pytest.raises(DoesNotFit, match="needs a GPU; none on the eligible nodes \\(b\\)"):
        place([node("b", 30)], req(device="gpu"), NEED)


def test_filters_cordon_labels_runtime_and_pinned_node() -> None:
    nodes = [
        node("a", 60, cordoned=True),
        node("b", 60, labels={"zone": "x"}),
        node("c", 60, labels={"zone": "y"}, runtimes=frozenset({"transformers"})),
        node("d", 20, labels={"zone": "y"}),
    ]
    assert place(nodes, req(device="cpu"), NEED).node == "d"  # binpack: d leaves 15 GiB, b 55
    assert place(nodes, req(device="cpu", labels={"zone": "x"}), NEED).node == "b"
    assert place(nodes, req(device="cpu", node="b"), NEED).node == "b"
    with pytest.raises(DoesNotFit) as err:
        place(nodes, req(device="cpu", labels={"zone": "z"}), NEED)
    text = str(err.value)
    assert "a is cordoned" in text and "b lacks labels zone=z" in text
    with pytest.raises(DoesNotFit, match="node 'e' is not in the cluster"):
        place(nodes, req(node="e"), NEED)
    with pytest.raises(DoesNotFit, match="c has no llamacpp runtime"):
        place(nodes, req(node="c"), NEED)


def test_does_not_fit_names_the_best_candidate_and_the_numbers() -> None:
    nodes = [node("a", 2, 4), node("b", 3, 5.5)]
    with pytest.raises(DoesNotFit) as err:
        place(nodes, req(), NEED)
    assert str(err.value) == (
        "'llama:8b' does not fit anywhere: it needs 6.00 GiB (weights 4.00 GiB, KV cache 1.00 GiB, "
        "compute 0.00 GiB, overhead 1.00 GiB); the best candidate is b cuda:0 with 5.50 GiB free"
    )
    assert isinstance(err.value, ModelLoadFailed) and err.value.status == 503
