"""``cluster/memory.py``: later placements need max(estimate, largest observed x 1.05) per version and
device kind."""

from __future__ import annotations

import math

from superollama.agent.estimate import MemoryEstimate
from superollama.cluster.memory import MARGIN, ObservedMemory, corrected, observed_bytes

MIB = 1024 * 1024
EST = MemoryEstimate(
    weights=92 * MIB, kv_cache=180 * MIB, compute=104 * MIB, overhead=128 * MIB, basis="gguf"
)


def test_the_estimate_stands_when_the_load_used_less() -> None:
    assert EST.total == 504 * MIB
    assert corrected(EST, None) is EST
    assert corrected(EST, 300 * MIB) is EST
    assert corrected(EST, 480 * MIB) is EST  # 480 x 1.05 = 504: not above the estimate


def test_more_observed_raises_the_estimate_to_observed_times_the_margin() -> None:
    raised = corrected(EST, 600 * MIB)
    assert MARGIN == 1.05
    assert raised.total == 630 * MIB
    assert (raised.weights, raised.kv_cache, raised.compute) == (EST.weights, EST.kv_cache, EST.compute)
    assert raised.overhead == EST.overhead + 126 * MIB
    assert raised.basis == "gguf; raised to the observed 600.0 MiB x 1.05"


def test_observed_per_version_and_device_kind_keeps_the_largest() -> None:
    seen = ObservedMemory()
    seen.record("smollm2:135m", "cpu", 550 * MIB, node="alpha", instance="inst-1")
    seen.record("smollm2:135m", "cpu", 520 * MIB, node="beta", instance="inst-2")
    seen.record("smollm2:135m", "cpu", None)
    assert seen.get("smollm2:135m", "cpu") == 550 * MIB
    assert seen.get("smollm2:135m", "cuda") is None
    assert seen.get("other:1b", "cpu") is None
    assert seen.correct("smollm2:135m", "cpu", EST).total == math.ceil(550 * MIB * 1.05)
    assert seen.correct("smollm2:135m", "cuda", EST) is EST


def test_the_observed_number_is_the_devices_own() -> None:
    observed = {"rss": 400 * MIB, "gpu": 900 * MIB}
    assert observed_bytes("cpu", observed) == 400 * MIB
    assert observed_bytes("cuda:0", observed) == 900 * MIB
    assert observed_bytes("cuda:1", {"rss": 400 * MIB, "gpu": None}) is None  # no NVML: no number
    assert observed_bytes("cpu", None) is None
