"""The memory estimate (agent/estimate.py) against what llama.cpp itself reports when it loads the real
SmolLM2 GGUF: the model, KV and compute buffer sizes it logs (verbosity 4), for two context/slot shapes.
llama.cpp splits ``n_ctx`` over its slots (``n_ctx_seq = n_ctx / n_parallel``), as the runtime does."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.llamacpp_report import llama_cpp_reports

from superollama.agent.estimate import MIB, estimate
from superollama.store.gguf import as_metadata, read_gguf_metadata


@pytest.mark.parametrize(("n_ctx", "parallel"), [(8192, 4), (2048, 1)])
def test_smollm2_estimate_against_llama_cpp_on_load(smollm2_gguf: Path, n_ctx: int, parallel: int) -> None:
    seen = llama_cpp_reports(smollm2_gguf, n_ctx, parallel, timeout=120)
    assert seen.keys() == {"model", "KV", "compute"}, seen
    est = estimate(
        as_metadata(read_gguf_metadata(smollm2_gguf)), "gguf", n_ctx=n_ctx // parallel, n_parallel=parallel
    )
    assert round(est.weights / MIB, 2) == seen["model"]
    assert est.kv_cache / MIB == seen["KV"]
    # llama.cpp sizes its compute graph exactly; ours is its main terms: within 5 %, never under by more
    assert abs(est.compute / MIB - seen["compute"]) <= 0.05 * seen["compute"], (est.compute / MIB, seen)
