"""Real-backend latency through the gateway vs direct to the backend instance, same session.

    python bench/backends.py [--runs 5] [--max-tokens 128]

Starts `superollama serve` on a free port with a temporary home (the bundled SmolLM2 registered as
smollm2:135m), then measures: cold load (the agent's recorded load time and the first request's latency),
TTFT and decode tokens/s over streamed chat completions through the gateway and direct to the llama.cpp
instance (the same prompt, `ignore_eos` so every run decodes exactly --max-tokens), and the gateway's RSS
(the server process alone, not its backend children) idle and after the runs. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

MODEL = "smollm2:135m"
PROMPT = "Write a short story about a lighthouse keeper."


def start_server(home: Path, **extra: str) -> tuple[subprocess.Popen[str], str]:
    # one worker: the gateway-vs-direct comparison is about one request's path, not about spreading load
    env = {**os.environ, "SUPEROLLAMA_HOME": str(home), "SUPEROLLAMA_PORT": "0", "SUPEROLLAMA_WORKERS": "1"}
    env.update(extra)
    proc = subprocess.Popen(
        [sys.executable, "-m", "superollama.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if match := re.search(r"listening on (http://\S+)", line):
            return proc, match.group(1)
    raise RuntimeError("server did not start")


def stream_once(base: str, model: str, max_tokens: int) -> tuple[float, float, int]:
    """(ttft seconds, decode tokens/s, completion tokens) of one streamed chat completion."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                now = time.perf_counter()
                first = first or now
                last = now
    assert first is not None and last is not None
    return first - t0, (tokens - 1) / (last - first) if last > first else float("nan"), tokens


def measure(base: str, model: str, runs: int, max_tokens: int) -> dict[str, float]:
    results = [stream_once(base, model, max_tokens) for _ in range(runs)]
    return {
        "ttft_ms": statistics.median(r[0] for r in results) * 1000,
        "tok_s": statistics.median(r[1] for r in results),
        "tokens": statistics.median(r[2] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--hf-folder",
        type=Path,
        help="a Hugging Face model folder (safetensors) to serve with the transformers runtime instead: "
        "pulled with hf:// from a local stand-in of the hub",
    )
    parser.add_argument("--runtime", help="with --hf-folder: serve it with this runtime (e.g. vllm)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        extra: dict[str, str] = {}
        model = MODEL
        if args.hf_folder:
            extra["HF_ENDPOINT"] = stack.enter_context(_hub(args.hf_folder))
            extra["SUPEROLLAMA_BUNDLED_MODEL"] = "false"
            model = "bench:hf"
        proc, url = start_server(Path(tmp), **extra)
        server = psutil.Process(proc.pid)
        try:
            if args.hf_folder:
                body = {"source": "hf://local/model", "name": model, "stream": False, "runtime": args.runtime}
                httpx.post(url + "/admin/v1/pull", json=body, timeout=600).raise_for_status()
            rss_idle = server.memory_info().rss
            t0 = time.perf_counter()
            httpx.post(
                url + "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
                timeout=300,
            ).raise_for_status()
            first_request = time.perf_counter() - t0
            loads = httpx.get(url + "/admin/v1/events", params={"action": "instance.load"}).json()["events"]
            load_seconds = loads[0]["detail"]["seconds"]
            (instance,) = httpx.get(url + "/admin/v1/instances").json()["instances"]
            direct = instance["endpoint"]
            served = instance["version"]
            stream_once(url, model, 8)  # warm both paths
            rows: dict[str, Any] = {
                "gateway": measure(url, model, args.runs, args.max_tokens),
                "direct": measure(direct, served, args.runs, args.max_tokens),
            }
            rss_after = server.memory_info().rss
        finally:
            proc.terminate()
            proc.wait(30)
    g, d = rows["gateway"], rows["direct"]
    runtime = args.runtime or "transformers"
    backend = f"{args.hf_folder.name} on {runtime}" if args.hf_folder else "SmolLM2-135M Q4_1 on llama.cpp"
    print(f"{backend}, {os.cpu_count()} cores, {args.runs} runs, median")
    print(
        f"cold load (agent, spawn → healthy): {load_seconds * 1000:.0f} ms; first request incl. load: "
        f"{first_request * 1000:.0f} ms"
    )
    print(f"{'path':10} {'TTFT ms':>9} {'decode tok/s':>13} {'tokens':>7}")
    for name, row in rows.items():
        print(f"{name:10} {row['ttft_ms']:9.1f} {row['tok_s']:13.1f} {row['tokens']:7.0f}")
    added = g["ttft_ms"] - d["ttft_ms"]
    print(f"gateway vs direct: TTFT {added:+.1f} ms; tok/s ratio {g['tok_s'] / d['tok_s']:.3f}")
    print(f"gateway RSS: idle {rss_idle / 2**20:.0f} MiB, after {rss_after / 2**20:.0f} MiB")


@contextlib.contextmanager
def _hub(folder: Path) -> Iterator[str]:
    """A local stand-in of the Hugging Face hub serving ``folder`` as the repo ``local/model``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.integration.hub_standins import Hub, start

    hub = Hub()
    hub.add_hf_repo("local/model", {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = asyncio.run_coroutine_threadsafe(start(hub), loop).result(10)
    try:
        yield hub.url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


if __name__ == "__main__":
    main()
