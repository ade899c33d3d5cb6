"""What llama.cpp itself reports when it loads a GGUF: the model, KV and compute buffer sizes it logs at
verbosity 4, loaded as the runtime serves it (embeddings on, mean pooling). Read by
``tests/integration/test_estimate_vs_llamacpp.py`` and ``bench/memory.py``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

__all__ = ["llama_cpp_reports"]

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


def llama_cpp_reports(gguf: Path, n_ctx: int, parallel: int, *, timeout: float = 300) -> dict[str, float]:
    """The buffers llama.cpp logs when it loads ``gguf`` (MiB by kind)."""
    done = subprocess.run(
        [sys.executable, "-c", _LOAD, str(gguf), str(n_ctx), str(parallel)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    found: dict[str, float] = {}
    for kind, mib in _BUFFER.findall(done.stdout + done.stderr):
        found[kind] = found.get(kind, 0.0) + float(mib)
    return found
