"""``cluster/folders.py``: a folder version on a node with its own store, without Ray — the plan read from a
real store's manifest, the files copied as blobs by ``NodeBlobs`` from the store's own blob files (what the
control plane's origin serves), and the folder assembled only once every file is there."""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from superollama.cluster.blobs import BlobSource, NodeBlobs, TransferFailed, read_blob_chunk
from superollama.cluster.folders import (
    FILES_SUFFIX,
    FolderFile,
    FolderPlan,
    assemble_folder,
    complete_folder,
    derived_folder_plan,
    folder_plan,
    node_folder_key,
)
from superollama.core import Artifact, Layer, Manifest
from superollama.errors import IntegrityError, ModelLoadFailed, StoreError
from superollama.store import MEDIA_FILE, ModelStore

CHUNK = 64 * 1024
FILES = {
    "config.json": b'{"model_type": "bert"}',
    "model.safetensors": os.urandom(3 * CHUNK + 17),
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}


async def _folder_version(store: ModelStore, name: str = "minilm:1", files: dict[str, bytes] = FILES) -> Path:
    layers = []
    for filename, data in files.items():
        blob = await store.blobs.ingest([data])
        layers.append(Layer(media_type=MEDIA_FILE, digest=blob.digest, size=blob.size, filename=filename))
    store.manifests.write(Manifest(name=name, format="safetensors", layers=tuple(layers)))
    return store.model_dir(name)


def _source(path: Path, digest: str) -> BlobSource:
    async def read(offset: int, length: int) -> bytes:
        return await asyncio.to_thread(read_blob_chunk, path, digest, offset, length)

    return BlobSource("control plane", read)


async def _copy_files(node: NodeBlobs, plan: FolderPlan, *, skip: str | None = None) -> None:
    for file in plan.files:
        if file.path != skip:
            await node.fetch(file.digest, file.size, [_source(file.origin, file.digest)])


def _models(root: Path) -> list[str]:
    models = root / "models"
    return sorted(p.name for p in models.iterdir()) if models.is_dir() else []


async def test_a_folder_is_assembled_on_the_node_only_once_every_file_is_there(
    home: Path, tmp_path: Path
) -> None:
    store = ModelStore(home)
    folder = await _folder_version(store)
    plan = folder_plan("minilm:1", folder)
    assert {f.path for f in plan.files} == set(FILES)
    assert plan.size == sum(len(d) for d in FILES.values())
    for file in plan.files:  # the origin is the store's blob file the control plane's folder links to
        assert file.origin.parent == home / "blobs" and (folder / file.path).samefile(file.origin)

    node_root = tmp_path / "node"
    node = NodeBlobs(node_root, chunk_size=CHUNK, window=2)
    await _copy_files(node, plan, skip="model.safetensors")
    with pytest.raises(IntegrityError, match=r"model\.safetensors\) is not on this node"):
        node.assemble(plan.key, plan.entries, {"version": plan.version})
    assert _models(node_root) == [] and node.folder(plan.key, plan.entries) is None  # never half a folder
    assert not (node_root / "tmp").exists()  # nor a half-built one in tmp/: none was started

    await _copy_files(node, plan)
    path = Path(node.assemble(plan.key, plan.entries, {"version": plan.version, "seconds": 0.1}))
    assert path == node_root / "models" / plan.key and _models(node_root) == [plan.key]
    digests = {f.path: f.digest for f in plan.files}
    for name, data in FILES.items():
        assert (path / name).read_bytes() == data
        assert (path / name).samefile(node_root / "blobs" / digests[name].replace(":", "-"))  # a link
    assert node.folder(plan.key, plan.entries) == str(path)
    [done] = node.report()["folders"]
    assert (done["folder"], done["version"], done["files"], done["bytes"]) == (
        plan.key,
        "minilm:1",
        3,
        plan.size,
    )
    assert list((node_root / "tmp").iterdir()) == []


async def test_two_versions_of_the_same_files_share_one_folder_and_a_damaged_one_is_rebuilt(
    home: Path, tmp_path: Path
) -> None:
    store = ModelStore(home)
    one = folder_plan("minilm:1", await _folder_version(store, "minilm:1"))
    two = folder_plan("minilm:2", await _folder_version(store, "minilm:2"))
    assert one.key == two.key == node_folder_key((p, d) for p, d, _ in one.entries)

    node = NodeBlobs(tmp_path / "node", chunk_size=CHUNK)
    await _copy_files(node, one)
    first, second = await asyncio.gather(  # two assemblies at once: one wins the rename, both get it
        asyncio.to_thread(node.assemble, one.key, one.entries, {}),
        asyncio.to_thread(node.assemble, two.key, two.entries, {}),
    )
    assert first == second and _models(tmp_path / "node") == [one.key]

    (Path(first) / "config.json").unlink()  # damaged from outside: not complete any more, built again
    assert complete_folder(tmp_path / "node", one.key, one.entries) is None
    rebuilt = assemble_folder(tmp_path / "node", one.key, one.entries)
    assert rebuilt == Path(first) and (rebuilt / "config.json").read_bytes() == FILES["config.json"]
    assert list((tmp_path / "node" / "tmp").iterdir()) == []


async def test_a_folder_whose_files_do_not_make_its_key_or_have_another_size_is_refused(
    home: Path, tmp_path: Path
) -> None:
    store = ModelStore(home)
    plan = folder_plan("minilm:1", await _folder_version(store))
    node = NodeBlobs(tmp_path / "node", chunk_size=CHUNK)
    await _copy_files(node, plan)
    renamed = [("../escape.json" if p == "config.json" else p, d, s) for p, d, s in plan.entries]
    with pytest.raises(IntegrityError, match="do not make that folder"):
        assemble_folder(tmp_path / "node", plan.key, renamed)
    wrong_size = [(p, d, s + 1) for p, d, s in plan.entries]
    with pytest.raises(IntegrityError, match="bytes, not"):
        assemble_folder(tmp_path / "node", plan.key, wrong_size)
    assert _models(tmp_path / "node") == []


async def test_a_plan_needs_the_manifest_that_describes_that_folder(home: Path, tmp_path: Path) -> None:
    store = ModelStore(home)
    folder = await _folder_version(store)
    with pytest.raises(StoreError, match="no manifest of it"):
        folder_plan("other:1", folder)
    store.manifests.write(Manifest(name="other:1", format="safetensors", layers=()))
    with pytest.raises(StoreError, match="does not describe the folder"):
        folder_plan("other:1", folder)
    loose = tmp_path / "somewhere" / "my-model"
    loose.mkdir(parents=True)
    with pytest.raises(StoreError, match="not a folder of the store"):
        folder_plan("minilm:1", loose)


async def test_a_version_in_another_storage_root_is_served_from_that_roots_blobs(
    home: Path, tmp_path: Path
) -> None:
    fast = tmp_path / "fast"
    fast.mkdir()
    store = ModelStore(home, storage_roots=[("fast", str(fast))])
    await _folder_version(store)
    await store.move("minilm:1", "fast")
    plan = folder_plan("minilm:1", store.model_dir("minilm:1"))
    assert {f.origin.parent for f in plan.files} == {fast / "blobs"}
    node = NodeBlobs(tmp_path / "node", chunk_size=CHUNK)
    await _copy_files(node, plan)
    path = Path(node.assemble(plan.key, plan.entries, {}))
    assert {n: (path / n).read_bytes() for n in FILES} == FILES


@dataclass(frozen=True)
class _Node:
    name: str
    node_id: str
    store_root: str | None


async def test_placing_points_the_folder_and_an_adapters_base_at_the_nodes_copies(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``NodeCopies.place`` (the control plane's side): which plans it asks the node for, and the artifact
    it hands the runtime; the copies themselves run on Ray (``tests/cluster/test_cluster_blobs.py``)."""
    pytest.importorskip("ray")
    from superollama.cluster.copies import NodeCopies

    store = ModelStore(home)
    base = await _folder_version(store, "smol:hf")
    adapter = await _folder_version(store, "smol:lora", {"adapter_config.json": b"{}", "x.safetensors": b"w"})
    copies = NodeCopies(lambda name, node_id: asyncio.sleep(0), dict, node_actor=None)
    asked: list[FolderPlan] = []

    async def ensure_folder(node: _Node, plan: FolderPlan) -> str:
        asked.append(plan)
        return f"{node.store_root}/models/{plan.key}"

    monkeypatch.setattr(copies, "ensure_folder", ensure_folder)
    meta = {"adapter": "lora", "base": "smol:hf", "base_path": str(base), "base_format": "safetensors"}
    artifact = Artifact(name="smol:lora", format="lora", path=adapter, metadata=meta)

    placed = await copies.place(_Node("beta", "n1", "/beta"), artifact)
    assert [p.version for p in asked] == ["smol:lora", "smol:hf"]
    assert placed.path == Path("/beta/models") / asked[0].key
    assert placed.metadata["base_path"] == f"/beta/models/{asked[1].key}"
    assert placed.metadata["adapter"] == "lora" and artifact.metadata["base_path"] == str(base)

    assert placed.metadata.get("hf_base") is None
    assert await copies.place(_Node("gamma", "n2", None), artifact) == artifact  # reads the control plane's
    stray = Artifact(name="smol:hf", format="safetensors", path=adapter)  # not the folder it makes
    with pytest.raises(ModelLoadFailed, match=r"smol:hf cannot be copied to node beta: .*does not describe"):
        await copies.place(_Node("beta", "n1", "/beta"), stray)


def _dequantised_base(bases: Path) -> Path:
    """A fine-tune's dequantised base as the training worker leaves it: a plain folder, no manifest."""
    folder = bases / "0123456789abcdef"
    for name, data in {**FILES, ".superollama-complete": b"base.gguf\n"}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _origin(plan: FolderPlan, *, fail_after: int | None = None) -> dict[str, BlobSource]:
    """Each file as the control plane's origin serves it (``NodeBlobs(None).read``: only a file named
    after its digest in a ``blobs`` folder); ``fail_after``: every read past that many bytes fails."""
    origin = NodeBlobs(None)
    sources = {}
    for file in plan.files:

        async def read(offset: int, length: int, file: FolderFile = file) -> bytes:
            if fail_after is not None and offset + length > fail_after:
                raise ConnectionError("the origin went away")
            return await asyncio.to_thread(origin.read, file.digest, str(file.origin), offset, length)

        sources[file.path] = BlobSource("control plane", read)
    return sources


async def test_a_dequantised_base_gets_a_manifest_on_demand_and_travels_verified(tmp_path: Path) -> None:
    bases = tmp_path / "fine_tuning" / "bases"
    folder = _dequantised_base(bases)
    plan = await derived_folder_plan("smol:gguf (dequantised)", folder)
    assert {f.path for f in plan.files} == {*FILES, ".superollama-complete"}
    for file in plan.files:  # hashed into a blob store beside it, by hard links: no second copy
        assert file.origin.parent == bases / "blobs" and (folder / file.path).samefile(file.origin)
    listing = folder.with_name(folder.name + FILES_SUFFIX)
    kept = listing.stat().st_ino
    again = await derived_folder_plan("smol:gguf (dequantised)", folder)
    assert again == plan and listing.stat().st_ino == kept  # unchanged files: the kept list, not rewritten
    for damaged in ("not json", '[{"path": "config.json"}]', '["x"]'):  # a damaged list: hashed again
        listing.write_text(damaged)
        assert await derived_folder_plan("smol:gguf (dequantised)", folder) == plan
    kept = listing.stat().st_ino

    node_root = tmp_path / "node"
    node = NodeBlobs(node_root, chunk_size=CHUNK, window=2)
    big = next(f for f in plan.files if f.path == "model.safetensors")
    with pytest.raises(TransferFailed, match="origin went away"):  # cut after two chunks: bytes kept
        await node.fetch(big.digest, big.size, [_origin(plan, fail_after=2 * CHUNK)[big.path]])
    assert node.folder(plan.key, plan.entries) is None and _models(node_root) == []
    sources = _origin(plan)
    for file in plan.files:
        await node.fetch(file.digest, file.size, [sources[file.path]])
    resumed = next(r for r in node.report()["recent"] if r["digest"] == big.digest)
    assert resumed["resumed_from"] == 2 * CHUNK  # the rest only
    path = Path(node.assemble(plan.key, plan.entries, {"version": plan.version}))
    assert path == node_root / "models" / plan.key
    assert {n: (path / n).read_bytes() for n in FILES} == FILES

    (folder / "config.json").write_bytes(b'{"model_type": "llama"}')  # the base made again: hashed again
    changed = await derived_folder_plan("smol:gguf (dequantised)", folder)
    assert changed.key != plan.key and listing.stat().st_ino != kept
    [new] = [f for f in changed.files if f.path == "config.json"]
    assert new.origin.read_bytes() == b'{"model_type": "llama"}'


async def test_a_dequantised_base_changed_after_its_manifest_is_refused_on_the_node(tmp_path: Path) -> None:
    folder = _dequantised_base(tmp_path / "bases")
    plan = await derived_folder_plan("smol:gguf (dequantised)", folder)
    big = next(f for f in plan.files if f.path == "model.safetensors")
    with (folder / "model.safetensors").open("r+b") as f:  # same size, other bytes, in place (the same inode)
        f.write(b"x" * 16)
    node_root = tmp_path / "node"
    node = NodeBlobs(node_root, chunk_size=CHUNK)
    with pytest.raises(IntegrityError, match=rf"blob {big.digest} copied from control plane: .*refused"):
        await node.fetch(big.digest, big.size, [_origin(plan)[big.path]])
    assert list((node_root / "blobs").iterdir()) == []  # nothing kept, not even a partial file
    with pytest.raises(StoreError, match="not a folder"):
        await derived_folder_plan("gone", tmp_path / "bases" / "missing")


async def test_placing_an_adapter_of_a_gguf_copies_its_dequantised_base_too(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fine-tune of a GGUF base: the GGUF blob goes (llama.cpp's base) and so does the dequantised
    folder (``hf_base``, the transformers runtime's base), planned once for two nodes at once."""
    pytest.importorskip("ray")
    from superollama.cluster.copies import NodeCopies

    store = ModelStore(home)
    gguf = await store.blobs.ingest([b"GGUF" + os.urandom(64)])
    adapter = await _folder_version(store, "smol:ft", {"adapter_config.json": b"{}", "x.safetensors": b"w"})
    hf_base = _dequantised_base(tmp_path / "bases")
    copies = NodeCopies(lambda name, node_id: asyncio.sleep(0), dict, node_actor=None)
    folders: list[FolderPlan] = []
    blobs: list[str] = []

    async def ensure_folder(node: _Node, plan: FolderPlan) -> str:
        folders.append(plan)
        return f"{node.store_root}/models/{plan.key}"

    async def ensure_blob(node: _Node, digest: str, origin: Path) -> str:
        blobs.append(digest)
        return f"{node.store_root}/blobs/{digest.replace(':', '-')}"

    monkeypatch.setattr(copies, "ensure_folder", ensure_folder)
    monkeypatch.setattr(copies, "ensure_blob", ensure_blob)
    meta = {
        "adapter": "lora",
        "base": "smol:q4",
        "base_path": str(gguf.path),
        "base_format": "gguf",
        "hf_base": str(hf_base),
    }
    artifact = Artifact(name="smol:ft", format="lora", path=adapter, metadata=meta)
    beta, gamma = await asyncio.gather(
        copies.place(_Node("beta", "n1", "/beta"), artifact),
        copies.place(_Node("gamma", "n2", "/gamma"), artifact),
    )
    assert blobs == [gguf.digest, gguf.digest]
    [base_plan] = {p for p in folders if p.version == "smol:q4 (dequantised)"}  # one planning, both nodes
    assert beta.metadata["base_path"] == f"/beta/blobs/{gguf.digest.replace(':', '-')}"
    assert beta.metadata["hf_base"] == f"/beta/models/{base_plan.key}"
    assert gamma.metadata["hf_base"] == f"/gamma/models/{base_plan.key}"
    assert {f.path for f in base_plan.files} >= set(FILES)

    shutil.rmtree(hf_base)  # gone from the control plane too: nothing to copy, the node is told as it was
    placed = await copies.place(_Node("beta", "n1", "/beta"), artifact)
    assert placed.metadata["hf_base"] == str(hf_base)
