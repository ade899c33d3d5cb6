"""ollama:// pulls against a loopback stand-in of the Ollama registry, serving the real SmolLM2 GGUF with
template, params, system and license layers; and imports from a local Ollama models directory."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hub_standins import DOCKER_MANIFEST, Hub, sha256_of, start

from superollama.core import MEDIA_MODEL, Progress
from superollama.errors import IntegrityError, InvalidRequest, SourceNotFound
from superollama.store import ModelStore, RetryPolicy, list_ollama_models

TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ .Prompt }}"
SYSTEM = "You are a helpful assistant."
PARAMS = {"stop": ["<|im_end|>"], "temperature": 0.2, "num_ctx": 2048}
LICENSE = "Apache License 2.0"
M = "application/vnd.ollama.image."


def layers(gguf: Path) -> list[tuple[str, Path | bytes]]:
    return [
        (f"{M}model", gguf),
        (f"{M}template", TEMPLATE.encode()),
        (f"{M}system", SYSTEM.encode()),
        (f"{M}params", orjson.dumps(PARAMS)),
        (f"{M}license", LICENSE.encode()),
    ]


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    hub = Hub()
    runner = await start(hub)
    yield hub
    await runner.cleanup()


@pytest.fixture
def store(home: Path, hub: Hub) -> ModelStore:
    return ModelStore(home, ollama_registry=hub.url, retry=RetryPolicy(attempts=2, backoff=0.01))


def blobs(home: Path) -> list[str]:
    return (
        sorted(n for n in os.listdir(home / "blobs") if n.startswith("sha256-"))
        if (home / "blobs").exists()
        else []
    )


def partials(home: Path) -> list[str]:
    """Partial downloads and scratch files: ``*.partial`` beside the blobs, anything in tmp/."""
    tmp = os.listdir(home / "tmp") if (home / "tmp").exists() else []
    blobs = home / "blobs"
    return tmp + [n for n in os.listdir(blobs) if n.endswith(".partial")] if blobs.exists() else tmp


def check_smollm2(manifest_doc: dict[str, Any], pulled: Any) -> None:
    want = [(manifest_doc["config"]["mediaType"], manifest_doc["config"]["digest"])]
    want += [(la["mediaType"], la["digest"]) for la in manifest_doc["layers"]]
    assert [(la.media_type, la.digest) for la in pulled.layers] == want
    assert pulled.metadata["template"] == TEMPLATE
    assert pulled.metadata["system"] == SYSTEM
    assert pulled.metadata["params"] == PARAMS
    assert pulled.metadata["license"] == LICENSE
    assert pulled.metadata["ollama"] == {"model_format": "gguf", "model_family": "llama"}
    assert pulled.metadata["architecture"] == "llama"  # and the GGUF header was read too
    assert pulled.format == "gguf"


async def test_pull_manifest_and_blobs(store: ModelStore, hub: Hub, home: Path, smollm2_gguf: Path) -> None:
    doc = hub.add_ollama_model("library/smollm2:latest", layers(smollm2_gguf))
    hub.add_ollama_model("someone/smollm2:latest", layers(smollm2_gguf))
    events: list[Progress] = []
    pulled = await store.pull("ollama://smollm2:latest", "smollm2:ollama", on_progress=events.append)

    check_smollm2(doc, pulled)
    assert pulled.source == "ollama://registry.ollama.ai/library/smollm2:latest"
    (manifest_get,) = hub.gets("/v2/library/smollm2/manifests/latest")
    assert DOCKER_MANIFEST in manifest_get.headers["Accept"]
    model_digest = sha256_of(smollm2_gguf)
    assert len(hub.gets(f"/v2/library/smollm2/blobs/{model_digest}")) == 1
    assert len(hub.gets(f"/cdn/{model_digest}")) == 1  # the redirect was followed
    assert store.model_path("smollm2:ollama") == store.blobs.path(model_digest)
    assert len(blobs(home)) == 6
    labels = {e.status for e in events if e.digest == model_digest}
    assert labels == {f"pulling {model_digest[7:19]}"}

    again = await store.pull("ollama://registry.ollama.ai/someone/smollm2:latest", "other")
    assert again.layers == pulled.layers
    assert len(hub.gets(f"/cdn/{model_digest}")) == 1  # every blob was stored already: none fetched


async def test_missing_model(store: ModelStore, hub: Hub, home: Path) -> None:
    with pytest.raises(SourceNotFound):
        await store.pull("ollama://nope:1b", "nope")
    with pytest.raises(InvalidRequest):
        await store.pull("ollama://Bad Name!", "nope")
    assert store.list() == [] and blobs(home) == []


async def test_concurrent_pulls_fetch_each_blob_once(
    store: ModelStore, hub: Hub, home: Path, smollm2_gguf: Path
) -> None:
    size = await asyncio.to_thread(lambda: smollm2_gguf.stat().st_size)
    hub.add_ollama_model("library/smollm2:latest", layers(smollm2_gguf))
    a, b = await asyncio.gather(store.pull("ollama://smollm2", "a"), store.pull("ollama://smollm2", "b"))
    assert a.layers == b.layers
    digest = sha256_of(smollm2_gguf)
    assert len(hub.gets(f"/cdn/{digest}")) == 1
    assert hub.sent[f"/cdn/{digest}"] == size
    assert [m.name for m in store.list()] == ["a:latest", "b:latest"]
    assert len(blobs(home)) == 6


async def test_corrupt_blob_is_rejected(store: ModelStore, hub: Hub, home: Path, smollm2_gguf: Path) -> None:
    hub.add_ollama_model("library/smollm2:latest", layers(smollm2_gguf))
    digest = sha256_of(smollm2_gguf)
    hub.files[f"/cdn/{digest}"].corrupt_at = 12_345_678
    with pytest.raises(IntegrityError, match=digest[7:]):
        await store.pull("ollama://smollm2", "bad")
    assert store.list() == [] and blobs(home) == []
    assert partials(home) == []


# -- a local Ollama models directory ----------------------------------------------------------------------
def ollama_dir(root: Path, gguf: Path, name: tuple[str, str, str, str]) -> Path:
    """Lay out ``root/models`` as Ollama does, with a real copy of the GGUF as its model blob."""
    models = root / "models"
    (models / "blobs").mkdir(parents=True)
    config = orjson.dumps({"model_format": "gguf", "model_family": "llama"})
    entries = []
    for media, src in [("application/vnd.docker.container.image.v1+json", config), *layers(gguf)]:
        digest = sha256_of(src)
        dest = models / "blobs" / digest.replace(":", "-")
        if isinstance(src, bytes):
            dest.write_bytes(src)
        else:
            shutil.copyfile(src, dest)
        entries.append({"mediaType": media, "digest": digest, "size": dest.stat().st_size})
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": entries[0], "layers": entries[1:]}
    path = models.joinpath("manifests", *name)
    path.parent.mkdir(parents=True)
    path.write_bytes(orjson.dumps(doc))
    return models


async def test_import_local_ollama_models_links_blobs(
    store: ModelStore, home: Path, tmp_path: Path, smollm2_gguf: Path
) -> None:
    models = ollama_dir(
        tmp_path / "ollama", smollm2_gguf, ("registry.ollama.ai", "library", "smollm2", "135m")
    )
    assert [str(n) for n in list_ollama_models(models)] == ["registry.ollama.ai/library/smollm2:135m"]
    theirs = models / "blobs" / sha256_of(smollm2_gguf).replace(":", "-")

    (imported,) = await store.import_ollama_models(models)
    assert imported.name == "smollm2:135m"
    assert imported.metadata["template"] == TEMPLATE and imported.metadata["params"] == PARAMS
    ours = store.model_path("smollm2:135m")
    assert ours.stat().st_ino == theirs.stat().st_ino  # linked, not copied
    assert theirs.stat().st_nlink == 2
    assert sorted(os.listdir(home / "blobs")) == sorted(os.listdir(models / "blobs"))
    assert partials(home) == []
    await store.verify("smollm2:135m")

    pulled = await store.pull(f"ollama-dir://{models}#smollm2:135m", "again")
    assert pulled.layers == imported.layers


async def test_import_verifies_and_falls_back_to_copy(
    store: ModelStore,
    home: Path,
    tmp_path: Path,
    smollm2_gguf: Path,
    *,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    models = ollama_dir(
        tmp_path / "ollama", smollm2_gguf, ("registry.ollama.ai", "library", "smollm2", "135m")
    )
    theirs = models / "blobs" / sha256_of(smollm2_gguf).replace(":", "-")
    with theirs.open("r+b") as f:  # a damaged blob in the Ollama directory
        f.seek(1_000_000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(IntegrityError):
        await store.import_ollama_models(models)
    assert store.list() == [] and blobs(home) == [] and partials(home) == []
    shutil.copyfile(smollm2_gguf, theirs)

    def no_links(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    with caplog.at_level(logging.WARNING):
        await store.pull(f"ollama-dir://{models}#smollm2:135m", "copied")
    assert "copying it instead" in caplog.text
    assert store.model_path("copied").stat().st_ino != theirs.stat().st_ino
    await store.verify("copied")
    with pytest.raises(SourceNotFound):
        await store.pull(f"ollama-dir://{models}#absent:1", "x")
    with pytest.raises(InvalidRequest):
        await store.import_ollama_models(tmp_path)
    assert MEDIA_MODEL in {la.media_type for la in store.show("copied").layers}
