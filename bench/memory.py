"""Memory: the placement estimate of each real model against what its instance uses once loaded.

    python bench/memory.py               # SmolLM2 GGUF on llama.cpp, all-MiniLM-L6-v2 on transformers
    python bench/memory.py --hf-smollm2  # + SmolLM2 as float32 HF safetensors on transformers (built once
                                         #   from the GGUF, 20-90 s, cached like the tests' fixture)
    python bench/memory.py --json

Each model starts the way a node starts it: the version's metadata as a pull records it
(``store.gguf.as_metadata`` / ``store.folders.folder_metadata``), the estimate placement fits on a CPU
(``RayAgent._estimate``: ``agent/estimate.py`` with the runtime's context and slots), then the runtime's
own ``start`` (its worker process, llama.cpp's defaults: n_ctx 8192 over 4 slots), and once it answers
its health check, what the instance actor reports (``cluster.actors.observe_memory``: the resident set
of the worker and its children), which is what placement then corrects the estimate with. For the GGUF
it also loads the file once more with llama.cpp's verbose log (as ``tests/integration/
test_estimate_vs_llamacpp.py`` does) to print the model, KV and compute buffers llama.cpp itself reports.

Resident memory is not the estimate's twin: llama.cpp allocates its KV cache and compute buffer up front
but the pages count as resident only once touched, and transformers grows its KV cache as it generates;
the estimate is what the instance may come to need, the observation what it holds just after loading.
Every process it starts it stops. Needs ``superollama[cluster,transformers]`` and the two model wheels.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.conftest import minilm_path, smollm2_path  # noqa: E402
from tests.llamacpp_report import llama_cpp_reports  # noqa: E402

from superollama.agent.estimate import MIB, MemoryEstimate  # noqa: E402
from superollama.cluster.actors import observe_memory  # noqa: E402
from superollama.cluster.agent import RayAgent  # noqa: E402
from superollama.core import Artifact, InstanceSpec, Runtime  # noqa: E402
from superollama.runtimes.llamacpp import LlamaCppRuntime  # noqa: E402
from superollama.runtimes.transformers import TransformersRuntime  # noqa: E402
from superollama.store.folders import folder_metadata  # noqa: E402
from superollama.store.gguf import as_metadata, read_gguf_metadata  # noqa: E402


def folder_artifact(name: str, folder: Path) -> Artifact:
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return Artifact(name=name, format="safetensors", path=folder, metadata=folder_metadata(files))


async def measure(label: str, runtime: Runtime, artifact: Artifact) -> dict[str, Any]:
    est: MemoryEstimate = RayAgent._estimate(runtime, artifact, "cpu")
    spec = InstanceSpec(
        instance_id=f"bench-memory-{runtime.name}-{int(time.time())}",
        version=artifact.name,
        artifact=artifact,
        runtime=runtime.name,
    )
    started = time.monotonic()
    handle = await runtime.start(spec)
    try:
        load_s = time.monotonic() - started
        rss = observe_memory(handle.pid)["rss"] or 0
    finally:
        await handle.stop(10.0)
    return {
        "model": label,
        "runtime": runtime.name,
        "estimate": est.as_json(),
        "observed_rss": rss,
        "load_s": round(load_s, 1),
    }


def mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | runtime | weights | KV cache | compute | overhead | estimate | "
        "llama.cpp reports | RSS after load | estimate / RSS |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        e = r["estimate"]
        rep = r.get("llama_cpp")
        reported = (
            f"{rep['model']:.2f} + {rep['KV']:.2f} + {rep['compute']:.2f} = {sum(rep.values()):.2f}"
            if rep
            else "-"
        )
        lines.append(
            f"| {r['model']} | {r['runtime']} | {mib(e['weights'])} | {mib(e['kv_cache'])} | "
            f"{mib(e['compute'])} | {mib(e['overhead'])} | {mib(e['total'])} | {reported} | "
            f"{mib(r['observed_rss'])} | {e['total'] / max(r['observed_rss'], 1):.2f} |"
        )
    return (
        "\n".join(lines) + "\n(MiB; RSS: the worker and its children once ready, what placement corrects by)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf-smollm2", action="store_true", help="also SmolLM2 as HF safetensors")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    rows = []

    gguf = smollm2_path()
    llama = LlamaCppRuntime(logs)  # the server's defaults: n_ctx 8192 over 4 slots
    smol = Artifact(
        name="smollm2:135m", format="gguf", path=gguf, metadata=as_metadata(read_gguf_metadata(gguf))
    )
    row = await measure("SmolLM2-135M Q4_1 (GGUF)", llama, smol)
    row["llama_cpp"] = llama_cpp_reports(gguf, llama.ctx, llama.parallel)
    rows.append(row)

    transformers = TransformersRuntime(logs)
    rows.append(
        await measure("all-MiniLM-L6-v2", transformers, folder_artifact("all-minilm:l6-v2", minilm_path()))
    )
    if args.hf_smollm2:
        from tests.integration.conftest import build_smollm2_hf, cache_root

        folder = build_smollm2_hf(gguf, cache_root())
        rows.append(
            await measure("SmolLM2-135M F32 (HF)", transformers, folder_artifact("smollm2:hf", folder))
        )

    print(json.dumps(rows, indent=1) if args.json else table(rows))


if __name__ == "__main__":
    asyncio.run(main())
