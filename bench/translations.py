"""The added latency of each API translation against the plain OpenAI relay, on the same fake upstream.

    python bench/translations.py                # 5 s per point after 1 s warm-up, c=1 and c=16
    python bench/translations.py --duration 10 --concurrency 1,16,64

One Super Ollama (``Super Ollama, all OFF`` of ``sobench/systems.py``: no key, no metrics, the usage
ledger on) connected to the nginx upstream of ``bench/run.py`` (fixed ``chat.completion`` JSON and a
20-chunk SSE stream), and wrk POSTing to each route in turn:

- ``openai chat``: ``/v1/chat/completions``, relayed byte for byte (the baseline);
- ``anthropic messages``: ``/v1/messages``, translated to chat and back (``wire.anthropic``);
- ``ollama chat``: ``/api/chat``, translated to chat and back (``wire.ollama``; NDJSON when streamed);
- ``openai responses``: ``/v1/responses`` with ``store: false`` (``wire.responses``), so no registry
  write is measured; ``responses + store`` adds that write (one row per request in SQLite).

JSON and SSE each; p50/p99 latency to the last byte and requests per second, and the added p50 against
the relay at the same concurrency. Prints a table and writes it to ``bench/results/translations-*.md``.
Every process it starts (nginx, the server, wrk) it stops.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Bench
from sobench import procs, systems, wrk

MODEL = systems.MODEL
PROMPT = "Say hello in one short sentence."


def bodies(stream: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    """Route and body of each API for one workload (the SSE connection is ``fakesse``)."""
    model = f"{'fakesse' if stream else 'fake'}/{MODEL}"
    messages = [{"role": "user", "content": PROMPT}]
    chat: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": "You are a benchmark."}, *messages],
    }
    chat["max_tokens"] = 32
    if stream:
        chat |= {"stream": True, "stream_options": {"include_usage": True}}
    anthropic = {
        "model": model,
        "system": "You are a benchmark.",
        "messages": messages,
        "max_tokens": 32,
        "stream": stream,
    }
    responses = {
        "model": model,
        "instructions": "You are a benchmark.",
        "input": PROMPT,
        "max_output_tokens": 32,
    }
    responses["stream"] = stream
    ollama = {
        "model": model,
        "messages": [{"role": "system", "content": "You are a benchmark."}, *messages],
        "options": {"num_predict": 32},
        "stream": stream,
    }
    return {
        "openai chat": ("/v1/chat/completions", chat),
        "anthropic messages": ("/v1/messages", anthropic),
        "ollama chat": ("/api/chat", ollama),
        "openai responses": ("/v1/responses", {**responses, "store": False}),
        "responses + store": ("/v1/responses", {**responses, "store": True}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", default="1,16")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    bench = Bench(argparse.Namespace())
    rows: list[dict[str, Any]] = []
    try:
        ctx, _ = bench.start_upstream()
        running = systems.start_superollama(ctx, systems.SUPEROLLAMA_OFF)
        bench.running.append(running)
        if running.unavailable:
            raise SystemExit(f"Super Ollama did not start: {running.unavailable}")
        base = running.targets["json"].url.rsplit("/v1/", 1)[0]
        pin = procs.pin(ctx.load_cpu)
        for workload, stream in (("json", False), ("sse", True)):
            for api, (path, body) in bodies(stream).items():
                body_file = bench.tmp / f"{api.replace(' ', '-')}-{workload}.json"
                body_file.write_text(json.dumps(body))
                for c in levels:
                    common = {"script": bench.script, "body_file": body_file, "connections": c, "pin": pin}
                    wrk.run_wrk(base + path, duration_s=args.warmup, **common)  # type: ignore[arg-type]
                    result = wrk.run_wrk(base + path, duration_s=args.duration, **common)  # type: ignore[arg-type]
                    rows.append(
                        {
                            "api": api,
                            "workload": workload,
                            "c": c,
                            "p50_ms": result.p50_ms,
                            "p99_ms": result.p99_ms,
                            "rps": result.rps,
                            "errors": result.error_count,
                        }
                    )
                    print(
                        f"{api:20} {workload:4} c={c:<3} p50 {result.p50_ms:7.2f} ms  "
                        f"{result.rps:8.0f} req/s  errors {result.error_count}",
                        flush=True,
                    )
    finally:
        bench.close()
    table = render(rows)
    print(table)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"translations-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(table)
    return 0


def render(rows: list[dict[str, Any]]) -> str:
    base = {(r["workload"], r["c"]): r for r in rows if r["api"] == "openai chat"}
    lines = [
        "| API | workload | c | p50 ms | p99 ms | req/s | added p50 vs relay | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        relay = base.get((r["workload"], r["c"]))
        added = r["p50_ms"] - relay["p50_ms"] if relay else float("nan")
        lines.append(
            f"| {r['api']} | {r['workload']} | {r['c']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['rps']:,.0f} | {added:+.2f} ms | {r['errors']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
