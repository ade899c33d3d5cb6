"""Download throughput of a pull vs a plain ``curl -o /dev/null`` of the same file from the same loopback
server (a separate process serving the real SmolLM2 GGUF with sendfile). Reported, not asserted: run with
``-s`` to read the numbers. The pull also writes, hashes, fsyncs and reads the GGUF header, so ``curl -o
FILE`` (which writes, without an fsync) is measured too."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from superollama.store import ModelStore

SERVER = """
import sys
from aiohttp import web
path = sys.argv[1]
async def handler(request):
    return web.FileResponse(path)
app = web.Application()
app.router.add_get("/model.gguf", handler)
async def main():
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    import asyncio
    await asyncio.Event().wait()
import asyncio
asyncio.run(main())
"""
RUNS = 3


@pytest.fixture
async def file_server(smollm2_gguf: Path) -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, str(smollm2_gguf), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    port = int((await proc.stdout.readline()).decode())
    yield f"http://127.0.0.1:{port}/model.gguf"
    proc.terminate()
    await proc.wait()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_pull_throughput_vs_curl(file_server: str, tmp_path: Path, smollm2_gguf: Path) -> None:
    size = await asyncio.to_thread(lambda: smollm2_gguf.stat().st_size)
    curl: list[float] = []
    curl_file: list[float] = []
    pull: list[float] = []
    for i in range(RUNS):
        for out, times in (("/dev/null", curl), (str(tmp_path / f"curl{i}.gguf"), curl_file)):
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec("curl", "-sf", "-o", out, file_server)
            assert await proc.wait() == 0
            times.append(time.perf_counter() - t0)

        store = ModelStore(tmp_path / f"home{i}")
        t0 = time.perf_counter()
        manifest = await store.pull(file_server, "smollm2:bench")
        pull.append(time.perf_counter() - t0)
        assert manifest.layers[0].size == size

    mb = size / 1e6

    def line(label: str, times: list[float]) -> str:
        best = min(times)
        runs = ", ".join(f"{t:.3f}" for t in times)
        ratio = best / min(curl)
        return f"  {label:<18} {mb / best:6.0f} MB/s  best {best:.3f} s  ({runs})  time/curl {ratio:.2f}"

    print(f"\n{mb:.1f} MB GGUF over loopback, best of {RUNS}:")
    print(line("curl -o /dev/null", curl))
    print(line("curl -o FILE", curl_file))
    print(line("pull", pull))
