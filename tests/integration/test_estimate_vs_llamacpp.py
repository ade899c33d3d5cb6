"""The memory estimate (agent/estimate.py) against what llama.cpp itself reports when it loads the real
SmolLM2 GGUF: the model, KV and compute buffer sizes it logs (verbosity 4), for two context/slot shapes.
llama.cpp splits ``n_ctx`` over its slots (``n_ctx_seq = n_ctx / n_parallel``), as the runtime does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from superollama.agent.estimate import MIB, estimate
from superollama.store.gguf import as_metadata, read_gguf_metadata

_LOAD = """
import os, sys, xllamacpp
p = xllamacpp.CommonParams()
p.model.path = sys.argv[1]
p.port = 0
p.hostnames = ["127.0.0.1"]
p.n_ctx = int(sys.argv[2])
p.n_parallel = int(sys.argv[3])
p.embedding = True  # as the runtime serves it (llama.cpp then sets n_batch = n_ubatch = 512)
p.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
p.verbosity = 4
s = xllamacpp.Server(p)  # returns once the model is loaded and its buffers logged
sys.stderr.flush()
os._exit(0)  # no orderly server shutdown needed: only the load's report is wanted
"""
_BUFFER = re.compile(r"(model|KV|compute) buffer size =\s+([\d.]+) MiB")


def _reported(gguf: Path, n_ctx: int, parallel: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _LOAD, str(gguf), str(n_ctx), str(parallel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found: dict[str, float] = {}
    for kind, mib in _BUFFER.findall(done.stdout + done.stderr):
        found[kind] = found.get(kind, 0.0) + float(mib)
    return found


@pytest.mark.parametrize(("n_ctx", "parallel"), [(8192, 4), (2048, 1)])
def test_smollm2_estimate_against_llama_cpp_on_load(smollm2_gguf: Path, n_ctx: int, parallel: int) -> None:
    seen = _reported(smollm2_gguf, n_ctx, parallel)
    assert seen.keys() == {"model", "KV", "compute"}, seen
    est = estimate(
        as_metadata(read_gguf_metadata(smollm2_gguf)), "gguf", n_ctx=n_ctx // parallel, n_parallel=parallel
    )
    assert round(est.weights / MIB, 2) == seen["model"]
    assert est.kv_cache / MIB == seen["KV"]
    # llama.cpp sizes its compute graph exactly; ours is its main terms: within 5 %, never under by more
    assert abs(est.compute / MIB - seen["compute"]) <= 0.05 * seen["compute"], (est.compute / MIB, seen)
