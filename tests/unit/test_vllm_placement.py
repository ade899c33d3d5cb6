"""vLLM sizes its own memory, and placement counts it that way (``VllmRuntime.memory_plan``,
``agent/estimate.py``'s ``plan``, ``MemoryEstimate.on_device``): on a GPU it takes
``gpu_memory_utilization`` of the device, whatever the weights; on a CPU a KV cache of
``VLLM_CPU_KVCACHE_SPACE`` GiB beside the weights, plus its two torch processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from superollama.agent.estimate import MemoryEstimate, estimate
from superollama.agent.placement import DeviceView, DoesNotFit, NodeView, PlacementRequest, place
from superollama.runtimes.vllm import VLLM_CPU_OVERHEAD, VllmRuntime

GIB = 1024**3
META = {  # Qwen2.5-0.5B-like, bf16
    "parameter_count": 494_032_768,
    "dtype": "BF16",
    "context_length": 32768,
    "embedding_length": 896,
    "block_count": 24,
    "head_count": 14,
    "head_count_kv": 2,
}


def _estimates(runtime: VllmRuntime) -> dict[str, MemoryEstimate]:
    return {
        kind: estimate(META, "safetensors", device_kind=kind, plan=runtime.memory_plan(kind))
        for kind in ("cpu", "cuda")
    }


def _gpu_node(name: str, total_gib: float, free_gib: float) -> NodeView:
    gpu = DeviceView("cuda:0", int(total_gib * GIB), int(free_gib * GIB))
    devices = (DeviceView("cpu", 8 * GIB, 1 * GIB), gpu)
    return NodeView(name=name, devices=devices, runtimes=frozenset({"vllm"}))


def test_on_a_gpu_vllm_needs_its_share_of_the_device_not_its_weights(tmp_path: Path) -> None:
    runtime = VllmRuntime(tmp_path, gpu_memory_utilization=0.9)
    need = _estimates(runtime)
    cuda = need["cuda"]
    assert cuda.device_share == 0.9 and cuda.weights == 494_032_768 * 2
    request = PlacementRequest(version="qwen:0.5b", runtime="vllm", device="gpu")
    # a 24 GiB GPU with 20 GiB free: 0.9 x 24 = 21.6 GiB do not fit, though the weights are under 1 GiB
    with pytest.raises(
        DoesNotFit, match=r"needs 21\.60 GiB .* best candidate is small cuda:0 with 20\.00 GiB"
    ):
        place([_gpu_node("small", 24, 20)], request, need)
    got = place([_gpu_node("small", 24, 20), _gpu_node("big", 80, 79)], request, need)
    assert (got.node, got.device) == ("big", "cuda:0")
    assert got.estimate.total == int(0.9 * 80 * GIB)  # what is reserved while it starts
    assert got.estimate.as_json()["device_share"] == 0.9


def test_on_a_cpu_vllm_needs_its_kv_cache_space_and_its_processes(tmp_path: Path) -> None:
    cpu = _estimates(VllmRuntime(tmp_path, cpu_kvcache_gib=1.0))["cpu"]
    assert cpu.kv_cache == 1 * GIB and cpu.overhead == VLLM_CPU_OVERHEAD
    assert cpu.total == 494_032_768 * 2 + GIB + VLLM_CPU_OVERHEAD
    assert "KV cache of 1 GiB" in cpu.basis
    assert cpu.on_device(64 * GIB) is cpu  # no share: the same estimate


def test_other_runtimes_are_sized_by_the_formula_as_before() -> None:
    plain = estimate(META, "safetensors", device_kind="cuda", n_ctx=2048)
    assert plain.device_share == 0.0 and plain.on_device(80 * GIB) is plain
    assert plain.kv_cache == 2048 * 24 * 2 * (64 + 64) * 2
