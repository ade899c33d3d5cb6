"""The added latency of ``/v1/rerank`` and ``/v2/rerank`` against calling the rerank server directly, next
to the plain chat relay measured the same way (the baseline).

    python bench/rerank_relay.py            # 400 pairs per row after 30 warm-up pairs
    python bench/rerank_relay.py --n 1000

One ``superollama serve`` (no bundled model, no key) with three connections to the local stand-ins of
``tests/e2e`` (text-embeddings-inference's ``/rerank``, vLLM's ``/v1/rerank``, TGI's chat), and one httpx
client on a keep-alive connection that alternates a direct request and the same request through the
gateway (10 documents per rerank), so that the load of a shared machine hits both alike. Prints the p50
of each and the difference. Every process it starts it stops.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import ServerProcess  # noqa: E402
from tests.e2e.rerank_standins import TeiStandIn, VllmRerankStandIn  # noqa: E402
from tests.e2e.standins import TgiStandIn  # noqa: E402

QUERY = "Which animals live in Peru?"
DOCS = [f"document number {i} about llamas and other camelids of Peru" for i in range(10)]
Request = tuple[str, dict[str, Any]]


def pair(client: httpx.Client, direct: Request, gateway: Request, n: int) -> tuple[float, float]:
    """p50 in ms of ``direct`` and of ``gateway``, sent alternately."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(30 + n):
        for (url, body), out in zip((direct, gateway), times, strict=True):
            start = time.perf_counter()
            answer = client.post(url, json=body)
            if i >= 30:
                out.append(time.perf_counter() - start)
            answer.raise_for_status()
    return statistics.median(times[0]) * 1000, statistics.median(times[1]) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400)
    args = parser.parse_args(argv)
    tei, vllm, tgi = TeiStandIn().start(), VllmRerankStandIn().start(), TgiStandIn().start()
    server = ServerProcess(Path(tempfile.mkdtemp(prefix="rerank-bench-")), SUPEROLLAMA_BUNDLED_MODEL="false")
    try:
        server.start()
        for kind, url, name in (
            ("tgi", tei.url, "tei"),
            ("openai", vllm.url + "/v1", "vllm"),
            ("tgi", tgi.url, "tgi"),
        ):
            done = server.cli("connect", kind, url, "--name", name)
            assert done.returncode == 0, done.stderr
        chat = {"messages": [{"role": "user", "content": "hello"}]}
        rerank = {"query": QUERY, "documents": DOCS}
        rows = (
            (
                "chat relay (baseline) -> TGI",
                (tgi.url + "/v1/chat/completions", {"model": TgiStandIn.MODEL_ID, **chat}),
                (server.url + "/v1/chat/completions", {"model": f"tgi/{TgiStandIn.MODEL_ID}", **chat}),
            ),
            (
                "/v2/rerank -> TEI /rerank",
                (tei.url + "/rerank", {"query": QUERY, "texts": DOCS}),
                (server.url + "/v2/rerank", {"model": f"tei/{TeiStandIn.MODEL_ID}", **rerank}),
            ),
            (
                "/v1/rerank -> vLLM /v1/rerank",
                (vllm.url + "/v1/rerank", {"model": VllmRerankStandIn.MODEL_ID, **rerank}),
                (server.url + "/v1/rerank", {"model": f"vllm/{VllmRerankStandIn.MODEL_ID}", **rerank}),
            ),
        )
        print(f"{'route':32s} {'direct p50':>11s} {'gateway p50':>12s} {'added':>9s}")
        with httpx.Client(timeout=30) as client:
            for name, direct, through in rows:
                d, g = pair(client, direct, through, args.n)
                print(f"{name:32s} {d:8.2f} ms {g:9.2f} ms {g - d:6.2f} ms", flush=True)
    finally:
        server.stop()
        for stand_in in (tei, vllm, tgi):
            stand_in.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
