"""The memory estimate per device (agent/estimate.py): the issue's unit vector, SmolLM2's real header
against the buffer sizes llama.cpp printed when it loaded it here, and the safetensors arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from superollama.agent.estimate import (
    MIB,
    OVERHEAD,
    SENTENCE_TRANSFORMERS_OVERHEAD,
    TORCH_CPU_OVERHEAD,
    estimate,
    kv_cache_bytes,
)
from superollama.store.gguf import as_metadata, read_gguf_metadata

GIB = 1024**3


def test_llama_3_1_8b_f16_kv_at_8192_tokens_is_one_gib() -> None:
    # Llama-3.1-8B: 32 layers, 8 KV heads of 128 dimensions (K and V)
    kv = kv_cache_bytes(
        n_ctx=8192, n_parallel=1, head_count_kv=8, n_layers=32, head_dim_k=128, head_dim_v=128
    )
    assert kv == 1 * GIB


def test_kv_cache_scales_with_slots_and_cache_type() -> None:
    base = dict(n_ctx=4096, head_count_kv=8, n_layers=32, head_dim_k=128, head_dim_v=128)
    f16 = kv_cache_bytes(n_parallel=1, **base)  # type: ignore[arg-type]
    assert kv_cache_bytes(n_parallel=4, **base) == 4 * f16  # type: ignore[arg-type]
    assert kv_cache_bytes(n_parallel=1, cache_type="q8_0", **base) == f16 * 34 // 64  # type: ignore[arg-type]
    assert kv_cache_bytes(n_parallel=1, cache_type="f32", **base) == 2 * f16  # type: ignore[arg-type]


def test_per_layer_kv_heads_are_summed() -> None:
    # a model whose layers differ (some without attention): the array form of head_count_kv
    kv = kv_cache_bytes(
        n_ctx=10, n_parallel=1, head_count_kv=[2, 0, 2], n_layers=3, head_dim_k=4, head_dim_v=4
    )
    assert kv == 10 * 4 * 8 * 2


def test_unknown_cache_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown KV cache type 'q3'"):
        kv_cache_bytes(
            n_ctx=1, n_parallel=1, head_count_kv=1, n_layers=1, head_dim_k=1, head_dim_v=1, cache_type="q3"
        )


def test_smollm2_matches_what_llama_cpp_reports_on_load(smollm2_gguf: Path) -> None:
    """llama.cpp (xllamacpp 2026.10.11549, verbosity 4) loading this file with n_ctx 8192 over 4 slots
    printed: ``CPU_Mapped model buffer size = 92.10 MiB``, ``CPU KV buffer size = 180.00 MiB`` (2048 cells
    x 4 seqs, K f16 90 MiB + V f16 90 MiB), ``CPU compute buffer size = 103.65 MiB``. The integration
    test ``test_estimate_vs_llamacpp.py`` reads those lines again from a real load."""
    meta = as_metadata(read_gguf_metadata(smollm2_gguf))
    est = estimate(meta, "gguf", n_ctx=2048, n_parallel=4)
    assert round(est.weights / MIB, 2) == 92.10
    assert est.kv_cache == 180 * MIB
    assert abs(est.compute / MIB - 103.65) / 103.65 < 0.02
    assert est.overhead == OVERHEAD["cpu"]
    assert est.total == est.weights + est.kv_cache + est.compute + est.overhead
    on_gpu = estimate(meta, "gguf", device_kind="cuda", n_ctx=2048, n_parallel=4)
    assert on_gpu.total - est.total == OVERHEAD["cuda"] - OVERHEAD["cpu"]


def test_gguf_context_defaults_to_the_models_own(smollm2_gguf: Path) -> None:
    meta = as_metadata(read_gguf_metadata(smollm2_gguf))
    assert estimate(meta, "gguf").kv_cache == estimate(meta, "gguf", n_ctx=8192).kv_cache


def test_gguf_without_a_tensor_table_is_refused() -> None:
    with pytest.raises(ValueError, match="no tensor_bytes"):
        estimate({"architecture": "llama"}, "gguf")


def test_safetensors_parameters_times_dtype_plus_kv() -> None:
    # SmolLM2-135M as HF safetensors (fp32): 134,515,008 parameters, 30 layers, 9 heads, 3 KV heads
    meta = {
        "parameter_count": 134_515_008,
        "dtype": "F32",
        "context_length": 8192,
        "embedding_length": 576,
        "block_count": 30,
        "head_count": 9,
        "head_count_kv": 3,
    }
    est = estimate(meta, "safetensors", n_ctx=2048)
    assert est.weights == 134_515_008 * 4
    assert est.kv_cache == 2048 * 30 * 3 * (64 + 64) * 4  # transformers keeps an F32 model's cache in F32
    bf16 = estimate({**meta, "dtype": "BF16"}, "safetensors", n_ctx=2048)
    assert bf16.weights == est.weights // 2 and bf16.kv_cache == est.kv_cache // 2
    assert "KV bf16" in bf16.basis


def test_safetensors_on_a_cpu_counts_the_pytorch_runtime() -> None:
    """all-MiniLM-L6-v2 (its metadata as a pull records it) on the transformers runtime used 536 MiB
    resident after its load (``bench/memory.py``): 87 MiB of weights over the 470 MiB that torch,
    transformers, sentence-transformers and the worker cost before any model. The estimate counts
    that runtime (it was 219 MiB with llama.cpp's 128 MiB worker overhead, 2.4x under) and no KV cache
    for an encoder."""
    minilm = {
        "architecture": "bert",
        "parameter_count": 22_713_728,
        "dtype": "F32",
        "context_length": 512,
        "embedding_length": 384,
        "block_count": 6,
        "head_count": 12,
        "head_count_kv": 12,
        "sentence_transformers": True,
    }
    est = estimate(minilm, "safetensors")
    assert est.weights == 22_713_728 * 4 and est.kv_cache == 0 and "encoder" in est.basis
    assert est.overhead == TORCH_CPU_OVERHEAD + SENTENCE_TRANSFORMERS_OVERHEAD
    observed = 536 * MIB
    assert observed <= est.total <= 1.25 * observed  # above what it uses, not far above
    chat = estimate({**minilm, "sentence_transformers": False}, "safetensors")
    assert chat.overhead == TORCH_CPU_OVERHEAD and chat.kv_cache == 512 * 6 * 12 * (32 + 32) * 4
    on_gpu = estimate(minilm, "safetensors", device_kind="cuda")
    assert on_gpu.overhead == OVERHEAD["cuda"]  # the device's memory: a CUDA context, not the host's torch


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="no memory estimate for format 'onnx'"):
        estimate({}, "onnx")
