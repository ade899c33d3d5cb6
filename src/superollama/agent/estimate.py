"""How much memory an instance of a version needs on a device, from its metadata alone (nothing loaded).

Placement (``agent/placement.py``) fits instances on devices with these numbers before anything starts,
so they come from what the store already read when the version was pulled (``Artifact.metadata``):

- **GGUF** (``store/gguf.py``): the weights are the tensor data region of the file (``tensor_bytes``: what
  llama.cpp maps, its ``model buffer size``); the KV cache is
  ``n_ctx x n_parallel x Σ_layers n_head_kv x (head_dim_k + head_dim_v) x bytes(cache type)``, with the
  per-layer ``head_count_kv`` array where the model has one and ``attention.key_length`` /
  ``value_length`` where it says them (else ``embedding_length / head_count``); the compute buffer is
  llama.cpp's scratch for one micro-batch (logits ``n_vocab`` plus the feed-forward and embedding
  activations, 4 bytes each, per token of ``n_ubatch``); then a fixed overhead per device kind (the
  worker process itself; a CUDA context).
- **safetensors** (``store/folders.py``): parameters x bytes of their dtype, the same KV cache formula
  from ``config.json``'s numbers (``n_ctx``: the model's ``max_position_embeddings`` unless given), in the
  model's own float type (what transformers keeps it in: an F32 model's cache is F32); none for a
  sentence-transformers folder (an encoder: it generates nothing). The overhead on a CPU is the PyTorch
  runtime's, measured in the transformers worker before any model loads (torch 2.13 CPU, transformers,
  the worker's server: 271 MiB resident; sentence-transformers, which the worker imports for such a
  folder, adds 199 MiB): ``TORCH_CPU_OVERHEAD`` and ``SENTENCE_TRANSFORMERS_OVERHEAD``, not the 128 MiB
  of a llama.cpp worker (all-MiniLM-L6-v2 was estimated at 219 MiB with it and used 536 MiB).

Checked against llama.cpp's own report on load (``tests/unit/test_memory_estimate.py`` records it):
SmolLM2-135M Q4_1 with ``n_ctx`` 8192 over 4 slots → model buffer 92.10 MiB (ours: 92.10), KV 180.00 MiB
(ours: 180.00), compute 103.65 MiB (ours: 104.25). Sliding-window layers (Gemma 3) are counted as full
ones: an over-estimate, on the safe side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "CACHE_TYPE_BYTES",
    "DTYPE_BYTES",
    "OVERHEAD",
    "SENTENCE_TRANSFORMERS_OVERHEAD",
    "TORCH_CPU_OVERHEAD",
    "MemoryEstimate",
    "estimate",
    "kv_cache_bytes",
]

MIB = 1024 * 1024
GIB = 1024 * MIB

# Bytes per element of llama.cpp's KV cache types (block types: bytes per block / elements per block).
CACHE_TYPE_BYTES: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}

# safetensors dtypes (their header's names) → bytes per parameter.
DTYPE_BYTES: dict[str, float] = {
    "F64": 8.0,
    "F32": 4.0,
    "F16": 2.0,
    "BF16": 2.0,
    "F8_E4M3": 1.0,
    "F8_E5M2": 1.0,
    "I64": 8.0,
    "I32": 4.0,
    "I16": 2.0,
    "I8": 1.0,
    "U8": 1.0,
    "BOOL": 1.0,
    "float32": 4.0,
    "float16": 2.0,
    "bfloat16": 2.0,
}

# A fixed allowance per instance beyond its buffers: the worker process (Python + the runtime's library)
# on a CPU; a CUDA context and the library's kernels on a GPU.
OVERHEAD: dict[str, int] = {"cpu": 128 * MIB, "cuda": 512 * MIB}
# A safetensors model's worker on a CPU: Python, torch, transformers and the worker's server resident
# before the weights (271 MiB measured), with room for one forward pass's activations.
TORCH_CPU_OVERHEAD = 320 * MIB
# What importing sentence-transformers adds to it (199 MiB measured: it pulls scikit-learn and scipy in).
SENTENCE_TRANSFORMERS_OVERHEAD = 200 * MIB


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes an instance needs on one device kind, by part (``total`` is what placement fits)."""

    weights: int
    kv_cache: int
    compute: int
    overhead: int
    basis: str  # how it was made, for "does not fit" messages and ``ps``
    device_share: float = 0.0  # a runtime that takes this share of its device's memory (vLLM on a GPU)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead

    def on_device(self, device_total: int) -> MemoryEstimate:
        """What it needs on a device of ``device_total`` bytes: its parts, or its share of the device when
        that is more (the difference counted as KV cache: what vLLM fills the rest of its share with)."""
        share = int(self.device_share * device_total)
        if share <= self.total:
            return self
        return replace(self, kv_cache=self.kv_cache + share - self.total)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "total": self.total,
            "weights": self.weights,
            "kv_cache": self.kv_cache,
            "compute": self.compute,
            "overhead": self.overhead,
            "basis": self.basis,
        }
        if self.device_share:
            out["device_share"] = self.device_share
        return out


def kv_cache_bytes(
    *,
    n_ctx: int,
    n_parallel: int,
    head_count_kv: int | list[int],
    n_layers: int,
    head_dim_k: int,
    head_dim_v: int,
    cache_type: str = "f16",
) -> int:
    """``n_ctx x n_parallel x Σ_layers n_head_kv x (head_dim_k + head_dim_v) x bytes(cache type)``.

    ``n_ctx`` is per sequence; ``head_count_kv`` one number for every layer or one per layer."""
    per_elem = CACHE_TYPE_BYTES.get(cache_type.lower())
    if per_elem is None:
        raise ValueError(f"unknown KV cache type {cache_type!r} (one of {', '.join(CACHE_TYPE_BYTES)})")
    heads = sum(head_count_kv) if isinstance(head_count_kv, list) else head_count_kv * n_layers
    return int(n_ctx * n_parallel * heads * (head_dim_k + head_dim_v) * per_elem)


def estimate(
    metadata: Mapping[str, Any],
    fmt: str,
    *,
    device_kind: str = "cpu",
    n_ctx: int | None = None,
    n_parallel: int = 1,
    cache_type: str = "f16",
    n_ubatch: int = 512,
    plan: Mapping[str, float] | None = None,
) -> MemoryEstimate:
    """What one instance of a version (its ``Artifact.metadata`` and format) needs on ``device_kind``.

    ``n_ctx``: tokens per sequence (None: the model's own context length); ``n_parallel``: sequences
    served at once (llama.cpp's slots); ``cache_type``: llama.cpp's KV cache type (a safetensors model
    keeps its cache in its own float type). ``plan``: what a runtime that sizes its own memory says of it
    (its ``memory_plan(device_kind)``): ``device_share`` (a share of the device's memory: vLLM's
    ``gpu_memory_utilization``), ``kv_cache_bytes`` (a KV cache of a fixed size: vLLM's
    ``VLLM_CPU_KVCACHE_SPACE``), ``overhead_bytes`` (its process). Raises ``ValueError`` when the
    metadata lacks what is needed."""
    overhead = OVERHEAD.get(device_kind, OVERHEAD["cpu"])
    if plan:
        return _planned(estimate(metadata, fmt, device_kind=device_kind, n_ctx=n_ctx), plan)
    if fmt.lower() == "gguf":
        return _gguf(
            metadata, overhead, n_ctx=n_ctx, n_parallel=n_parallel, cache_type=cache_type, n_ubatch=n_ubatch
        )
    if fmt.lower() in ("safetensors", "folder", "hf"):
        if device_kind == "cpu":
            overhead = TORCH_CPU_OVERHEAD
            if metadata.get("sentence_transformers"):
                overhead += SENTENCE_TRANSFORMERS_OVERHEAD
        return _safetensors(metadata, overhead, n_ctx, n_parallel)
    raise ValueError(f"no memory estimate for format {fmt!r}")


def _gguf(
    meta: Mapping[str, Any],
    overhead: int,
    *,
    n_ctx: int | None,
    n_parallel: int,
    cache_type: str,
    n_ubatch: int,
) -> MemoryEstimate:
    info = meta.get("model_info")
    info = info if isinstance(info, Mapping) else {}
    arch = meta.get("architecture") or info.get("general.architecture")

    def key(suffix: str) -> Any:
        return info.get(f"{arch}.{suffix}")

    weights = _need(meta.get("tensor_bytes"), "tensor_bytes")
    layers = _need(meta.get("block_count") or key("block_count"), "block_count")
    embd = _need(meta.get("embedding_length") or key("embedding_length"), "embedding_length")
    heads = _need(meta.get("head_count") or key("attention.head_count"), "head_count")
    kv_heads = key("attention.head_count_kv")
    if not isinstance(kv_heads, list):
        kv_heads = meta.get("head_count_kv") or kv_heads or heads
    head_k = _int(key("attention.key_length")) or embd // heads
    head_v = _int(key("attention.value_length")) or head_k
    ctx = n_ctx or _need(meta.get("context_length") or key("context_length"), "context_length")
    kv = kv_cache_bytes(
        n_ctx=ctx,
        n_parallel=n_parallel,
        head_count_kv=kv_heads,
        n_layers=layers,
        head_dim_k=head_k,
        head_dim_v=head_v,
        cache_type=cache_type,
    )
    vocab = _int(meta.get("vocab_size")) or _int(key("vocab_size")) or 0
    ff = _int(key("feed_forward_length")) or 4 * embd
    compute = 4 * n_ubatch * (vocab + 2 * ff + 2 * embd)
    basis = f"gguf: tensors + KV {cache_type} n_ctx {ctx} x {n_parallel} + compute (ubatch {n_ubatch})"
    return MemoryEstimate(weights, kv, compute, overhead, basis)


def _safetensors(
    meta: Mapping[str, Any], overhead: int, n_ctx: int | None, n_parallel: int
) -> MemoryEstimate:
    params = _need(meta.get("parameter_count"), "parameter_count")
    dtype = str(meta.get("dtype") or "F32")
    per_param = DTYPE_BYTES.get(dtype, DTYPE_BYTES.get(dtype.upper(), 4.0))
    cache_type = "f32" if per_param >= 4 else "bf16" if "bf16" in dtype.lower() else "f16"
    kv = 0
    layers, embd, heads = meta.get("block_count"), meta.get("embedding_length"), meta.get("head_count")
    encoder = bool(meta.get("sentence_transformers"))
    if not encoder and isinstance(layers, int) and isinstance(embd, int) and isinstance(heads, int) and heads:
        ctx = n_ctx or _int(meta.get("context_length")) or 2048
        head_dim = embd // heads
        kv = kv_cache_bytes(
            n_ctx=ctx,
            n_parallel=n_parallel,
            head_count_kv=_int(meta.get("head_count_kv")) or heads,
            n_layers=layers,
            head_dim_k=head_dim,
            head_dim_v=head_dim,
            cache_type=cache_type,
        )
    basis = f"safetensors: {params} parameters x {per_param:g} B ({dtype})"
    basis += " (an encoder: no KV cache)" if encoder else f" + KV {cache_type}"
    return MemoryEstimate(int(params * per_param), kv, 0, overhead, basis)


def _planned(base: MemoryEstimate, plan: Mapping[str, float]) -> MemoryEstimate:
    """``base`` (the weights from the metadata) sized as the runtime's ``plan`` says."""
    kv = int(plan.get("kv_cache_bytes", base.kv_cache))
    overhead = int(plan.get("overhead_bytes", base.overhead))
    share = float(plan.get("device_share", 0.0))
    basis = base.basis.split(" + KV", 1)[0]
    if share:
        basis += f"; the runtime takes {share:g} of the device's memory"
    elif "kv_cache_bytes" in plan:
        basis += f" + a KV cache of {kv / GIB:g} GiB (the runtime's own)"
    return MemoryEstimate(base.weights, kv, 0 if share else base.compute, overhead, basis, share)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _need(v: Any, name: str) -> int:
    got = _int(v)
    if got is None:
        raise ValueError(f"the version's metadata has no {name}: no memory estimate")
    return got
