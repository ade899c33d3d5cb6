"""Pulls that meet a full disk, a ``blobs/`` on its own filesystem, or an upstream that goes silent.

Real filesystems (small tmpfs mounts), the real SmolLM2 GGUF (98 MB) served by the loopback hub stand-in,
and TCP servers that accept and never answer. ``asyncio.wait_for`` bounds each pull so a regression fails
the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from hub_standins import Hub, sha256_of, start
from tests.failing_io import SilentServer, Tmpfs

from superollama.core import MEDIA_MODEL
from superollama.errors import InsufficientStorage, Unavailable
from superollama.store import HfSource, HttpSource, ModelStore, OllamaSource, RetryPolicy

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GUARD = 60  # seconds: far above what any pull here should take; it only turns a hang into a failure
SHORT = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=0.5)
QUICK_GIVE_UP = RetryPolicy(attempts=50, backoff=0.05, max_backoff=0.2, stall=2.0)


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    hub = Hub()
    runner = await start(hub)
    yield hub
    await runner.cleanup()


def partials(blobs: Path) -> list[str]:
    return sorted(n for n in os.listdir(blobs) if n.endswith(".partial")) if blobs.exists() else []


def size_of(path: Path) -> int:
    return path.stat().st_size


def short_store(home: Path, *, ollama: str = "http://127.0.0.1:9") -> ModelStore:
    """A store whose network sources time out fast and give up after 2 s without progress."""
    return ModelStore(home, ollama_registry=ollama, timeout=SHORT, retry=QUICK_GIVE_UP)


# -- disk full -----------------------------------------------------------------------------------------
async def test_a_download_that_fills_the_disk_fails_and_leaves_no_partial(
    tmp_path: Path, tmpfs: Tmpfs, hub: Hub, smollm2_gguf: Path
) -> None:
    home = tmpfs.mount(tmp_path / "home", 40)
    served = hub.add_file(NAME, smollm2_gguf)
    served.hide_length = True  # the size is unknown before the bytes come: no refusal up front
    store = ModelStore(home, retry=RetryPolicy(attempts=2, backoff=0.01))

    with pytest.raises(InsufficientStorage, match="no space left") as failed:
        await asyncio.wait_for(store.pull(f"{hub.url}/files/{NAME}", "smol:full"), GUARD)

    assert failed.value.status == 507
    assert partials(home / "blobs") == [] and store.list() == []
    assert hub.sent[f"/files/{NAME}"] > 30_000_000  # it did fill the disk first
    free = shutil.disk_usage(home).free
    assert free > 35 * 2**20  # the space is back
    (home / "later.bin").write_bytes(b"x" * 2**20)  # and a later write works


async def test_a_download_that_cannot_fit_is_refused_before_it_starts(
    tmp_path: Path, tmpfs: Tmpfs, hub: Hub, smollm2_gguf: Path
) -> None:
    home = tmpfs.mount(tmp_path / "home", 40)
    hub.add_file(NAME, smollm2_gguf)
    store = ModelStore(home)

    with pytest.raises(InsufficientStorage) as refused:
        await asyncio.wait_for(store.pull(f"{hub.url}/files/{NAME}", "smol:big"), GUARD)

    message = refused.value.message
    assert "needs 98." in message and " free on " in message and str(home) in message, message
    assert hub.gets(f"/files/{NAME}") == []  # not one byte fetched
    assert partials(home / "blobs") == []


async def test_a_resumed_download_needs_only_the_missing_bytes(
    tmp_path: Path, tmpfs: Tmpfs, hub: Hub, smollm2_gguf: Path
) -> None:
    """The check counts what a partial file already holds: 98 MB with 70 MB on disk fits in 80 MB."""
    home = tmpfs.mount(tmp_path / "home", 140)
    served = hub.add_file(NAME, smollm2_gguf)
    served.cut_after = 70_000_000
    url = f"{hub.url}/files/{NAME}#sha256={sha256_of(smollm2_gguf)[7:]}"
    with pytest.raises(Unavailable):
        await ModelStore(home, retry=RetryPolicy(attempts=0)).pull(url, "smol:resumed")
    (partial,) = partials(home / "blobs")
    kept = size_of(home / "blobs" / partial)
    # leave room for the missing bytes and the margin, not for the whole file
    filler = shutil.disk_usage(home).free - (served.size - kept) - 24 * 2**20
    await asyncio.to_thread((home / "filler").write_bytes, b"\0" * filler)

    manifest = await asyncio.wait_for(ModelStore(home).pull(url, "smol:resumed"), GUARD)
    assert manifest.layers[0].digest == sha256_of(smollm2_gguf)


# -- blobs/ on another filesystem ----------------------------------------------------------------------
async def test_pulls_work_when_blobs_is_a_mount_point(
    tmp_path: Path, tmpfs: Tmpfs, hub: Hub, smollm2_gguf: Path
) -> None:
    home = tmp_path / "home"
    tmpfs.mount(home / "blobs", 300)
    assert os.stat(home / "blobs").st_dev != os.stat(home).st_dev
    digest = sha256_of(smollm2_gguf)
    served = hub.add_file(NAME, smollm2_gguf)
    served.cut_after = 30_000_000  # and a resume on the way
    store = ModelStore(home, retry=RetryPolicy(attempts=3, backoff=0.01))

    over_http = await asyncio.wait_for(store.pull(f"{hub.url}/files/{NAME}", "smol:http"), GUARD)
    from_file = await asyncio.wait_for(store.pull(smollm2_gguf.as_uri(), "smol:file"), GUARD)
    hub.add_ollama_model("library/smol:1", [(f"{MEDIA_MODEL}", smollm2_gguf)])
    await store.remove("smol:http")
    await store.remove("smol:file")
    from_ollama = await asyncio.wait_for(
        ModelStore(home, ollama_registry=hub.url).pull("ollama://smol:1", "smol:ollama"), GUARD
    )

    for manifest in (over_http, from_file):
        assert manifest.layers[0].digest == digest
    assert digest in {layer.digest for layer in from_ollama.layers}
    assert partials(home / "blobs") == []
    await store.verify("smol:ollama")


# -- silent upstreams ----------------------------------------------------------------------------------
async def test_an_http_source_that_never_answers_fails_the_pull(
    home: Path, silent_upstream: SilentServer
) -> None:
    store = short_store(home)
    with pytest.raises(Unavailable, match="no progress for") as failed:
        await asyncio.wait_for(store.pull(f"{silent_upstream.url}/m.gguf", "m:silent"), GUARD)
    assert "sent nothing within the read timeout" in failed.value.message
    assert silent_upstream.accepted >= 1


async def test_an_http_download_that_stalls_fails_the_pull(home: Path, hub: Hub, smollm2_gguf: Path) -> None:
    served = hub.add_file(NAME, smollm2_gguf)
    served.stall_at = 5_000_000  # headers, 5 MB, then silence; a resume gets headers and silence
    store = short_store(home)
    with pytest.raises(Unavailable, match="no progress for"):
        await asyncio.wait_for(store.pull(f"{hub.url}/files/{NAME}", "m:stalled"), GUARD)
    assert len(hub.gets(f"/files/{NAME}")) >= 2  # it did retry from where it stopped first
    assert store.list() == []


async def test_an_ollama_registry_that_never_answers_fails_the_pull(
    home: Path, silent_upstream: SilentServer
) -> None:
    store = short_store(home, ollama=silent_upstream.url)
    with pytest.raises(Unavailable, match="no progress for"):
        await asyncio.wait_for(store.pull("ollama://smol:1", "m:silent"), GUARD)


async def test_an_ollama_registry_that_sends_headers_then_stalls_fails_the_pull(
    home: Path, stalling_upstream: SilentServer
) -> None:
    store = short_store(home, ollama=stalling_upstream.url)
    with pytest.raises(Unavailable, match="no progress for"):
        await asyncio.wait_for(store.pull("ollama://smol:1", "m:stalled"), GUARD)


async def test_an_ollama_blob_that_stalls_fails_the_pull(home: Path, hub: Hub, smollm2_gguf: Path) -> None:
    hub.add_ollama_model("library/smol:1", [(MEDIA_MODEL, smollm2_gguf)])
    hub.files[f"/cdn/{sha256_of(smollm2_gguf)}"].stall_at = 3_000_000
    store = short_store(home, ollama=hub.url)
    with pytest.raises(Unavailable, match="no progress for"):
        await asyncio.wait_for(store.pull("ollama://smol:1", "m:stalled"), GUARD)


def test_every_network_source_gets_the_store_timeouts(home: Path) -> None:
    store = short_store(home)
    for scheme in ("https", "http", "hf", "ollama"):
        source = store.sources[scheme]
        assert isinstance(source, HttpSource | HfSource | OllamaSource)
        assert source.timeout is SHORT and source.retry is QUICK_GIVE_UP


# -- partial files: an upgrade's leftovers, stale ones ------------------------------------------------
async def test_a_partial_download_left_in_tmp_by_an_earlier_version_is_resumed(
    home: Path, hub: Hub, smollm2_gguf: Path
) -> None:
    digest = sha256_of(smollm2_gguf)
    hub.add_file(NAME, smollm2_gguf)
    legacy = home / "tmp" / f"download-{digest.replace(':', '-')}.partial"
    legacy.parent.mkdir()
    with smollm2_gguf.open("rb") as f:
        await asyncio.to_thread(legacy.write_bytes, f.read(30_000_000))

    await asyncio.wait_for(ModelStore(home).pull(f"{hub.url}/files/{NAME}#sha256={digest[7:]}", "m"), GUARD)
    assert hub.gets(f"/files/{NAME}")[-1].headers["Range"] == "bytes=30000000-"
    assert not legacy.exists() and partials(home / "blobs") == []


async def test_gc_purges_stale_partial_files_beside_the_blobs(home: Path, smollm2_gguf: Path) -> None:
    store = ModelStore(home)
    await store.pull(smollm2_gguf.as_uri(), "m")
    stale, fresh = home / "blobs" / "download-url-abc.partial", home / "blobs" / "download-url-def.partial"
    for path in (stale, fresh):
        await asyncio.to_thread(path.write_bytes, b"x")
    os.utime(stale, (1, 1))  # written in 1970: nobody resumes it any more
    await store.gc()
    assert partials(home / "blobs") == [fresh.name]
    await store.verify("m")  # the blob itself stays
