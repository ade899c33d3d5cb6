"""hf:// pulls against a loopback stand-in of the hub: the real SmolLM2 GGUF by quantization and by file
name, revisions resolved to commits, HF_TOKEN as Bearer, the real all-MiniLM-L6-v2 folder."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hub_standins import Hub, sha256_of, start

from superollama.core import MEDIA_MODEL, Progress
from superollama.errors import IntegrityError, InvalidRequest, SourceNotFound
from superollama.store import MEDIA_FILE, ModelStore, RetryPolicy

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
MAIN = "1" * 40
V1 = "2" * 40
FAST = RetryPolicy(attempts=2, backoff=0.01)


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    hub = Hub()
    runner = await start(hub)
    yield hub
    await runner.cleanup()


@pytest.fixture
def store(home: Path, hub: Hub) -> ModelStore:
    return ModelStore(home, hf_endpoint=hub.url, retry=FAST)


def gguf_repo(hub: Hub, smollm2_gguf: Path, **kw: object) -> None:
    files: dict[str, Path | bytes] = {
        GGUF: smollm2_gguf,
        "SmolLM2-135M-Instruct.Q8_0.gguf": b"GGUF not served in these tests",
        "SmolLM2-135M-Instruct.IQ4_1.gguf": b"GGUF a near miss for a substring match",
        "README.md": b"# SmolLM2",
        ".gitattributes": b"*.gguf filter=lfs",
    }
    hub.add_hf_repo(REPO, files, revisions={"main": MAIN, "v1.0": V1}, **kw)  # type: ignore[arg-type]


def blobs(home: Path) -> list[str]:
    return (
        sorted(n for n in os.listdir(home / "blobs") if n.startswith("sha256-"))
        if (home / "blobs").exists()
        else []
    )


async def test_gguf_by_quant(store: ModelStore, hub: Hub, home: Path, smollm2_gguf: Path) -> None:
    gguf_repo(hub, smollm2_gguf)
    events: list[Progress] = []
    manifest = await store.pull(f"hf://{REPO}:q4_1", "smollm2:hf", on_progress=events.append)

    digest = sha256_of(smollm2_gguf)
    (layer,) = manifest.layers
    assert (layer.media_type, layer.digest, layer.filename) == (MEDIA_MODEL, digest, GGUF)
    assert manifest.format == "gguf" and manifest.metadata["quantization"] == "Q4_1"
    assert manifest.metadata["hf"] == {"repo": REPO, "revision": "main", "commit": MAIN}
    assert manifest.source == f"hf://{REPO}@{MAIN}:{GGUF}"
    (info,) = [r for r in hub.requests if r.path.startswith("/api/")]
    assert info.path == f"/api/models/{REPO}/revision/main" and info.query == "blobs=true"
    (download,) = hub.gets(f"/{REPO}/resolve/{MAIN}/{GGUF}")  # fetched at the commit, not "main"
    assert "Authorization" not in download.headers
    assert blobs(home) == [digest.replace(":", "-")]
    assert store.model_path("smollm2:hf") == store.blobs.path(digest)
    with pytest.raises(InvalidRequest, match="not a folder"):
        store.model_dir("smollm2:hf")
    shapes = [e.as_dict() for e in events]
    assert shapes[0] == {"status": "pulling manifest"} and shapes[-1] == {"status": "success"}
    assert {
        "status": f"pulling {digest[7:19]}",
        "digest": digest,
        "total": layer.size,
        "completed": layer.size,
    } in shapes


async def test_gguf_by_file_name_at_a_revision(store: ModelStore, hub: Hub, smollm2_gguf: Path) -> None:
    gguf_repo(hub, smollm2_gguf)
    manifest = await store.pull(f"hf://{REPO}@v1.0:{GGUF}", "smollm2:v1")
    assert manifest.metadata["hf"]["commit"] == V1
    assert hub.gets(f"/api/models/{REPO}/revision/v1.0")
    assert len(hub.gets(f"/{REPO}/resolve/{V1}/{GGUF}")) == 1
    # the same blob again (another name): no second download
    await store.pull(f"hf://{REPO}@{V1}:Q4_1", "smollm2:again")
    assert len(hub.gets(f"/{REPO}/resolve/{V1}/{GGUF}")) == 1
    with pytest.raises(SourceNotFound):
        await store.pull(f"hf://{REPO}@nope:Q4_1", "x")


async def test_hf_token_is_sent_as_bearer(
    home: Path, hub: Hub, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_repo(hub, smollm2_gguf, token="hf_secret")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the hub's own variables, when none is given
    monkeypatch.delenv("HF_TOKEN", raising=False)
    store = ModelStore(home, retry=FAST)
    with pytest.raises(SourceNotFound, match="HF_TOKEN"):
        await store.pull(f"hf://{REPO}:Q4_1", "private")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    await store.pull(f"hf://{REPO}:Q4_1", "private")
    served = [r for r in hub.requests if r.headers.get("Authorization") == "Bearer hf_secret"]
    assert {r.path for r in served} == {f"/api/models/{REPO}/revision/main", f"/{REPO}/resolve/{MAIN}/{GGUF}"}
    assert store.exists("private")


async def test_ambiguous_missing_and_unselected_quant(
    store: ModelStore, hub: Hub, home: Path, smollm2_gguf: Path
) -> None:
    files: dict[str, Path | bytes] = {f"m.{q}.gguf": b"x" for q in ("Q4_K_M", "Q4_K_S", "Q8_0")}
    hub.add_hf_repo("org/quants", files)
    with pytest.raises(InvalidRequest, match=r"several GGUF files: m\.Q4_K_M\.gguf, m\.Q4_K_S\.gguf;"):
        await store.pull("hf://org/quants:q4_k", "x")
    with pytest.raises(SourceNotFound, match=r"no GGUF file matches 'Q5_K_M'.*m\.Q8_0\.gguf"):
        await store.pull("hf://org/quants:Q5_K_M", "x")
    with pytest.raises(SourceNotFound, match=r"no file 'other\.gguf'"):
        await store.pull("hf://org/quants:other.gguf", "x")
    hub.add_hf_repo("org/two", {"a.Q4_0.gguf": b"x", "a.Q8_0.gguf": b"x"})
    with pytest.raises(InvalidRequest, match="pick one"):
        await store.pull("hf://org/two", "x")
    hub.add_hf_repo("org/empty", {"README.md": b"nothing"})
    with pytest.raises(InvalidRequest, match="no GGUF file and no safetensors"):
        await store.pull("hf://org/empty", "x")
    with pytest.raises(SourceNotFound):
        await store.pull("hf://org/absent:Q4_0", "x")
    assert store.list() == [] and blobs(home) == []
    assert not [r for r in hub.requests if "/resolve/" in r.path]


def minilm_files(minilm_dir: Path) -> dict[str, Path | bytes]:
    files: dict[str, Path | bytes] = {
        p.relative_to(minilm_dir).as_posix(): p for p in minilm_dir.rglob("*") if p.is_file()
    }
    files["onnx/model.onnx"] = b"not part of a safetensors folder"
    files["pytorch_model.bin"] = b"neither"
    return files


async def test_folder_pull(store: ModelStore, hub: Hub, home: Path, minilm_dir: Path) -> None:
    files = minilm_files(minilm_dir)
    hub.add_hf_repo(
        "sentence-transformers/all-MiniLM-L6-v2", files, lfs={"model.safetensors", "tokenizer.json"}
    )
    manifest = await store.pull("hf://sentence-transformers/all-MiniLM-L6-v2", "minilm:l6")

    wanted = {
        "1_Pooling/config.json",
        "config.json",
        "config_sentence_transformers.json",
        "data_config.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    }
    assert manifest.format == "safetensors"
    assert {la.filename for la in manifest.layers} == wanted
    assert {la.media_type for la in manifest.layers} == {MEDIA_FILE}
    for layer in manifest.layers:
        assert layer.digest == sha256_of(minilm_dir / str(layer.filename))
    assert manifest.metadata["architecture"] == "bert"
    assert manifest.metadata["embedding_length"] == 384
    assert manifest.metadata["parameter_size"] == "22.7M" and manifest.metadata["dtype"] == "F32"
    assert manifest.metadata["sentence_transformers"] is True

    folder = store.model_dir("minilm:l6")
    assert store.model_path("minilm:l6") == folder == store.artifact("minilm:l6").path
    assert folder.parent == home / "models"
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert on_disk == wanted
    for name in wanted:
        assert (folder / name).read_bytes() == (minilm_dir / name).read_bytes()
        assert (folder / name).stat().st_ino == store.blobs.path(sha256_of(minilm_dir / name)).stat().st_ino

    await store.copy("minilm:l6", "minilm:copy")  # same files, same folder
    assert store.model_dir("minilm:copy") == folder
    await store.remove("minilm:l6")
    assert folder.is_dir()
    await store.remove("minilm:copy")
    assert not folder.exists() and blobs(home) == []


async def test_folder_with_corrupt_weights_lists_nothing(
    store: ModelStore, hub: Hub, home: Path, minilm_dir: Path
) -> None:
    repo = hub.add_hf_repo("sentence-transformers/all-MiniLM-L6-v2", minilm_files(minilm_dir))
    repo.files["model.safetensors"].corrupt_at = 1_000_000
    with pytest.raises(IntegrityError, match=sha256_of(minilm_dir / "model.safetensors")[7:]):
        await store.pull("hf://sentence-transformers/all-MiniLM-L6-v2", "minilm")
    assert store.list() == [] and blobs(home) == []
    assert not (home / "models").exists()


async def test_concurrent_folder_pulls_fetch_each_file_once(
    store: ModelStore, hub: Hub, home: Path, minilm_dir: Path
) -> None:
    files = minilm_files(minilm_dir)
    hub.add_hf_repo("sentence-transformers/all-MiniLM-L6-v2", files, lfs={"model.safetensors"})
    ref = "hf://sentence-transformers/all-MiniLM-L6-v2"
    a, b = await asyncio.gather(store.pull(ref, "a"), store.pull(ref, "b"))
    assert a.layers == b.layers and len(a.layers) == 11
    downloads = [r.path for r in hub.requests if "/resolve/" in r.path]
    assert sorted(downloads) == sorted(set(downloads)) and len(downloads) == 11  # git files too: once each
    assert store.model_dir("a") == store.model_dir("b")
