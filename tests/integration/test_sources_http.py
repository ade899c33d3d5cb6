"""https:// (here http:// on loopback) pulls of the real SmolLM2 GGUF: resume with Range after a cut,
ETag changes, digest checks (fragment, sidecar), one download for concurrent pulls."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hub_standins import Hub, sha256_of, start

from superollama.core import MEDIA_MODEL, Progress
from superollama.errors import IntegrityError, InvalidRequest, SourceNotFound, Unavailable
from superollama.store import ModelStore, RetryPolicy

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FAST = RetryPolicy(attempts=3, backoff=0.01)
SLACK = 2 * 2**20  # bytes the client had buffered but not read when the connection dropped: lost


def range_start(value: str) -> int:
    assert value.startswith("bytes=") and value.endswith("-"), value
    return int(value[6:-1])


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    hub = Hub()
    runner = await start(hub)
    yield hub
    await runner.cleanup()


@pytest.fixture(scope="session")
def gguf_size(smollm2_gguf: Path) -> int:
    return smollm2_gguf.stat().st_size


@pytest.fixture(scope="session")
def changed_gguf(smollm2_gguf: Path) -> bytes:
    changed = bytearray(smollm2_gguf.read_bytes())
    changed[-1] ^= 0xFF  # tensor data: another valid GGUF
    return bytes(changed)


@pytest.fixture
def store(home: Path) -> ModelStore:
    return ModelStore(home, retry=FAST)


def blobs(home: Path) -> list[str]:
    return (
        sorted(n for n in os.listdir(home / "blobs") if n.startswith("sha256-"))
        if (home / "blobs").exists()
        else []
    )


def partials(home: Path) -> list[str]:
    """Partial downloads: ``*.partial`` files beside the blobs."""
    folder = home / "blobs"
    return sorted(n for n in os.listdir(folder) if n.endswith(".partial")) if folder.exists() else []


async def test_pull_with_digest_fragment(
    store: ModelStore, hub: Hub, home: Path, smollm2_gguf: Path, gguf_size: int
) -> None:
    size = gguf_size
    hub.add_file(NAME, smollm2_gguf)
    digest = sha256_of(smollm2_gguf)
    url = f"{hub.url}/files/{NAME}#sha256={digest[7:]}"
    events: list[Progress] = []
    manifest = await store.pull(url, "smollm2:http", on_progress=events.append)

    assert manifest.format == "gguf"
    assert manifest.layers[0].digest == digest and manifest.layers[0].size == size
    assert manifest.layers[0].media_type == MEDIA_MODEL and manifest.layers[0].filename == NAME
    assert manifest.metadata["quantization"] == "Q4_1"
    assert manifest.source == f"{hub.url}/files/{NAME}#sha256={digest[7:]}"
    assert blobs(home) == [digest.replace(":", "-")] and partials(home) == []
    assert [r.method for r in hub.requests] == ["HEAD", "GET"]  # no sidecar asked: the URL gave the digest
    assert hub.sent[f"/files/{NAME}"] == size
    pulling = [e for e in events if e.status.startswith("pulling ") and e.digest]
    assert {(e.status, e.total) for e in pulling} == {(f"pulling {digest[7:19]}", size)}
    assert pulling[-1].completed == size
    assert events[-1].status == "success"


async def test_interrupted_download_resumes_with_range(
    store: ModelStore, hub: Hub, smollm2_gguf: Path
) -> None:
    served = hub.add_file(NAME, smollm2_gguf, etag='"abc"')
    size = served.size
    served.cut_after = 30_000_000
    manifest = await store.pull(f"{hub.url}/files/{NAME}", "smollm2:resumed")

    assert manifest.layers[0].digest == sha256_of(smollm2_gguf)  # no digest given: computed, size-checked
    first, second = hub.gets(f"/files/{NAME}")
    assert "Range" not in first.headers
    assert 30_000_000 - SLACK <= range_start(second.headers["Range"]) <= 30_000_000
    assert second.headers["If-Range"] == '"abc"'
    assert size <= hub.sent[f"/files/{NAME}"] <= size + SLACK  # the bytes before the cut came once
    await store.verify("smollm2:resumed")


async def test_failed_pull_keeps_partial_and_next_pull_resumes(
    home: Path, hub: Hub, smollm2_gguf: Path
) -> None:
    served = hub.add_file(NAME, smollm2_gguf)
    served.cut_after = 40_000_000
    url = f"{hub.url}/files/{NAME}#sha256={sha256_of(smollm2_gguf)[7:]}"
    with pytest.raises(Unavailable, match="interrupted"):
        await ModelStore(home, retry=RetryPolicy(attempts=0)).pull(url, "m")
    assert ModelStore(home).list() == [] and blobs(home) == []
    (partial,) = partials(home)
    kept = (home / "blobs" / partial).stat().st_size
    assert 40_000_000 - SLACK <= kept <= 40_000_000

    await ModelStore(home, retry=FAST).pull(url, "m")  # a new process, the same partial file
    assert hub.gets(f"/files/{NAME}")[-1].headers["Range"] == f"bytes={kept}-"
    assert served.size <= hub.sent[f"/files/{NAME}"] <= served.size + SLACK
    assert partials(home) == []


async def test_changed_etag_restarts_from_zero(store: ModelStore, hub: Hub, smollm2_gguf: Path) -> None:
    served = hub.add_file(NAME, smollm2_gguf, etag='"v1"')
    served.cut_after, served.etag_after_cut = 25_000_000, '"v2"'
    await store.pull(f"{hub.url}/files/{NAME}", "m")
    _, second = hub.gets(f"/files/{NAME}")
    assert range_start(second.headers["Range"]) > 0 and second.headers["If-Range"] == '"v1"'
    assert hub.sent[f"/files/{NAME}"] == 25_000_000 + served.size  # the server sent the new file whole


async def test_new_etag_across_pulls_ignores_the_old_partial(
    home: Path, hub: Hub, smollm2_gguf: Path, changed_gguf: bytes
) -> None:
    served = hub.add_file(NAME, smollm2_gguf, etag='"v1"')
    served.cut_after = 20_000_000
    with pytest.raises(Unavailable):
        await ModelStore(home, retry=RetryPolicy(attempts=0)).pull(f"{hub.url}/files/{NAME}", "m")
    served.source, served.etag = changed_gguf, '"v2"'

    manifest = await ModelStore(home, retry=FAST).pull(f"{hub.url}/files/{NAME}", "m")
    assert "Range" not in hub.gets(f"/files/{NAME}")[-1].headers
    assert manifest.layers[0].digest == sha256_of(changed_gguf)


async def test_corrupt_byte_is_rejected_and_nothing_listed(
    store: ModelStore, hub: Hub, home: Path, smollm2_gguf: Path
) -> None:
    served = hub.add_file(NAME, smollm2_gguf)
    served.corrupt_at = 50_000_000
    digest = sha256_of(smollm2_gguf)
    events: list[Progress] = []
    with pytest.raises(IntegrityError, match=digest[7:]):
        await store.pull(f"{hub.url}/files/{NAME}#sha256={digest[7:]}", "bad", on_progress=events.append)
    assert store.list() == [] and not store.exists("bad")
    assert blobs(home) == [] and partials(home) == []  # a poisoned partial is not kept for a resume
    assert "success" not in [e.status for e in events]


async def test_sidecar_digest(store: ModelStore, hub: Hub, smollm2_gguf: Path) -> None:
    served = hub.add_file(NAME, smollm2_gguf)
    digest = sha256_of(smollm2_gguf)
    hub.sidecars[f"/files/{NAME}.sha256"] = f"{digest[7:]}  {NAME}\n"
    served.corrupt_at = 10
    with pytest.raises(IntegrityError):
        await store.pull(f"{hub.url}/files/{NAME}", "m")
    served.corrupt_at = None
    manifest = await store.pull(f"{hub.url}/files/{NAME}", "m")
    assert manifest.source.endswith(f"#sha256={digest[7:]}")


async def test_concurrent_pulls_download_once(
    store: ModelStore, hub: Hub, home: Path, smollm2_gguf: Path, gguf_size: int
) -> None:
    hub.add_file(NAME, smollm2_gguf)
    seen: dict[str, list[int]] = {"a": [], "b": []}
    a, b = await asyncio.gather(
        store.pull(f"{hub.url}/files/{NAME}", "a", on_progress=lambda p: seen["a"].append(p.completed or 0)),
        store.pull(f"{hub.url}/files/{NAME}", "b", on_progress=lambda p: seen["b"].append(p.completed or 0)),
    )
    assert a.layers == b.layers
    assert len(hub.gets(f"/files/{NAME}")) == 1
    assert hub.sent[f"/files/{NAME}"] == gguf_size
    assert max(seen["a"]) == max(seen["b"]) == gguf_size  # both saw the progress
    assert [m.name for m in store.list()] == ["a:latest", "b:latest"]
    assert len(blobs(home)) == 1 and partials(home) == []


async def test_cancelled_pull_keeps_partial_for_the_next(
    home: Path, hub: Hub, smollm2_gguf: Path, gguf_size: int
) -> None:
    hub.add_file(NAME, smollm2_gguf)
    store = ModelStore(home, retry=FAST)
    halfway = asyncio.Event()

    def on_progress(p: Progress) -> None:
        if (p.completed or 0) > 20_000_000:
            halfway.set()

    task = asyncio.create_task(store.pull(f"{hub.url}/files/{NAME}", "m", on_progress=on_progress))
    await halfway.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.list() == [] and blobs(home) == []
    (partial,) = partials(home)
    kept = (home / "blobs" / partial).stat().st_size
    assert kept > 20_000_000

    await store.pull(f"{hub.url}/files/{NAME}", "m")
    assert hub.gets(f"/files/{NAME}")[-1].headers["Range"] == f"bytes={kept}-"
    # what was in flight (socket buffers) at the cancel is lost, not the 20+ MB already on disk
    assert hub.sent[f"/files/{NAME}"] <= gguf_size + 8 * 2**20


async def test_transient_errors_are_retried_with_backoff(
    store: ModelStore, hub: Hub, smollm2_gguf: Path
) -> None:
    served = hub.add_file(NAME, smollm2_gguf)
    served.fail_times = 2  # the HEAD of resolve sees both 503s
    served.cut_after = 10_000_000
    await store.pull(f"{hub.url}/files/{NAME}", "m")
    assert [r.method for r in hub.requests if r.path == f"/files/{NAME}"] == ["HEAD"] * 3 + ["GET"] * 2
    served.fail_times = 9  # more than the policy's attempts: a clear 503, nothing listed
    with pytest.raises(Unavailable, match="HTTP 503"):
        await store.pull(f"{hub.url}/files/{NAME}", "other")
    assert [m.name for m in store.list()] == ["m:latest"]


async def test_errors(store: ModelStore, hub: Hub, home: Path) -> None:
    with pytest.raises(SourceNotFound):
        await store.pull(f"{hub.url}/files/nope.gguf", "m")
    hub.add_file("notes.txt", b"hello")
    with pytest.raises(InvalidRequest, match="GGUF"):
        await store.pull(f"{hub.url}/files/notes.txt", "m")
    with pytest.raises(InvalidRequest, match="sha256"):
        await store.pull(f"{hub.url}/files/x.gguf#sha256=xyz", "m")
    with pytest.raises(Unavailable):  # nothing listens there: bounded retries, then a clear 503
        await ModelStore(home, retry=RetryPolicy(attempts=1, backoff=0.01)).pull(
            "http://127.0.0.1:9/m.gguf", "m"
        )
    assert store.list() == []
