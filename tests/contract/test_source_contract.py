"""One behaviour for every ``Source`` (file, http(s), hf, ollama), each serving the real SmolLM2 GGUF: a local
file, or the loopback stand-ins of a file server, the Hugging Face hub and the Ollama registry
(tests/integration/hub_standins.py).

Through the seam (``resolve``, ``open``): a reference resolves to a plan whose files all carry a size and a
digest; opening each file yields exactly those bytes; a reference to nothing is ``SourceNotFound``, naming
it. Through the store, the one that verifies what a source streams: a pull keeps verified blobs, and bytes
that do not match the plan's digest are refused with nothing left behind (a plan that lies about a digest
stands in for a registry or a file that changed).

``http`` runs the ``https`` source's code (``PlainHttpSource`` is ``HttpSource`` on http://, loopback has no
TLS); its reference carries the digest as a ``#sha256=`` fragment, as a user would write it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from tests.integration.hub_standins import Hub, sha256_of, start

from superollama.core import MEDIA_MODEL
from superollama.errors import IntegrityError, SourceNotFound
from superollama.store import ModelStore, RetryPolicy
from superollama.store.sources import (
    FileSource,
    HfSource,
    OllamaSource,
    PlainHttpSource,
    Source,
    SourceFile,
    SourcePlan,
)

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FAST = RetryPolicy(attempts=1, backoff=0.01)
OLLAMA_MODEL = "application/vnd.ollama.image.model"


@dataclass
class Subject:
    source: Source
    ref: str  # resolves to the SmolLM2 GGUF (and, for ollama, its config)
    missing: str  # a well-formed reference to nothing


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    hub = Hub()
    runner = await start(hub)
    yield hub
    await runner.cleanup()


def _file(hub: Hub, gguf: Path, tmp: Path) -> Subject:
    local = tmp / GGUF
    shutil.copyfile(gguf, local)
    return Subject(FileSource(), local.as_uri(), (tmp / "absent.gguf").as_uri())


def _http(hub: Hub, gguf: Path, tmp: Path) -> Subject:
    hub.add_file(GGUF, gguf)
    ref = f"{hub.url}/files/{GGUF}#sha256={sha256_of(gguf)[7:]}"
    return Subject(PlainHttpSource(retry=FAST), ref, f"{hub.url}/files/absent.gguf")


def _hf(hub: Hub, gguf: Path, tmp: Path) -> Subject:
    hub.add_hf_repo(HF_REPO, {GGUF: gguf, "README.md": b"# SmolLM2"})
    source = HfSource(endpoint=hub.url, retry=FAST)
    return Subject(source, f"hf://{HF_REPO}:q4_1", "hf://HuggingFaceTB/absent-GGUF:q4_1")


def _ollama(hub: Hub, gguf: Path, tmp: Path) -> Subject:
    hub.add_ollama_model("library/smollm2:135m", [(OLLAMA_MODEL, gguf)])
    source = OllamaSource(registry=hub.url, retry=FAST)
    return Subject(source, "ollama://smollm2:135m", "ollama://absent:1b")


BUILDERS: dict[str, Callable[[Hub, Path, Path], Subject]] = {
    "file": _file,
    "http": _http,
    "hf": _hf,
    "ollama": _ollama,
}


@pytest.fixture(params=sorted(BUILDERS))
def subject(request: pytest.FixtureRequest, hub: Hub, smollm2_gguf: Path, tmp_path: Path) -> Subject:
    return BUILDERS[request.param](hub, smollm2_gguf, tmp_path)


@pytest.fixture(scope="session")
def smollm2_identity(smollm2_gguf: Path) -> tuple[int, str]:
    """The real GGUF's size and digest, as every source must plan them."""
    return smollm2_gguf.stat().st_size, sha256_of(smollm2_gguf)


def model_file(plan: SourcePlan) -> SourceFile:
    """The plan's GGUF: the one file of a single-file source, the model layer of an Ollama manifest."""
    (file,) = [f for f in plan.files if f.media_type in (MEDIA_MODEL, OLLAMA_MODEL)]
    return file


async def test_resolve_gives_every_file_a_size_and_a_digest(
    subject: Subject, smollm2_identity: tuple[int, str]
) -> None:
    plan = await subject.source.resolve(subject.ref)
    assert plan.format == "gguf" and plan.source
    assert all(f.size is not None and f.digest and f.digest.startswith("sha256:") for f in plan.files)
    assert plan.total_size == sum(f.size or 0 for f in plan.files)
    gguf = model_file(plan)
    assert (gguf.size, gguf.digest) == smollm2_identity


async def test_open_streams_exactly_the_planned_bytes(subject: Subject) -> None:
    plan = await subject.source.resolve(subject.ref)
    for file in plan.files:
        digest, size = hashlib.sha256(), 0
        async for chunk in subject.source.open(file):
            digest.update(chunk)
            size += len(chunk)
        assert (size, f"sha256:{digest.hexdigest()}") == (file.size, file.digest), file.filename


async def test_a_reference_to_nothing_is_source_not_found(subject: Subject) -> None:
    with pytest.raises(SourceNotFound) as missing:
        await subject.source.resolve(subject.missing)
    assert missing.value.status == 404
    assert "absent" in missing.value.message  # it says what was not found


async def test_a_pull_keeps_verified_blobs(subject: Subject, home: Path) -> None:
    store = ModelStore(home, sources=[subject.source], retry=FAST)
    plan = await subject.source.resolve(subject.ref)
    manifest = await store.pull(subject.ref, "contract:1")
    assert {(la.digest, la.size) for la in manifest.layers} == {(f.digest, f.size) for f in plan.files}
    await store.verify("contract:1")  # every blob hashes to its digest
    assert sorted(os.listdir(home / "blobs")) == sorted(str(f.digest).replace(":", "-") for f in plan.files)


class Lying:
    """The source under test, with a plan that claims another digest for the GGUF than its bytes have."""

    def __init__(self, real: Source) -> None:
        self.real = real
        self.scheme = real.scheme  # the store picks a source by scheme

    async def resolve(self, ref: str) -> SourcePlan:
        plan = await self.real.resolve(ref)
        gguf = model_file(plan)
        wrong = replace(gguf, digest="sha256:" + hashlib.sha256(b"other bytes").hexdigest())
        return replace(plan, files=tuple(wrong if f is gguf else f for f in plan.files))

    def open(self, file: SourceFile) -> AsyncIterator[bytes]:
        return self.real.open(file)


async def test_bytes_that_do_not_match_the_digest_are_refused(subject: Subject, home: Path) -> None:
    store = ModelStore(home, sources=[Lying(subject.source)], retry=FAST)
    with pytest.raises(IntegrityError, match="sha256"):
        await store.pull(subject.ref, "contract:bad")
    assert store.list() == []
    assert not (home / "blobs").exists() or os.listdir(home / "blobs") == []
