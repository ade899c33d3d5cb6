"""``cluster/folders.py``: a folder version on a node with its own store, without Ray — the plan read from a
real store's manifest, the files copied as blobs by ``NodeBlobs`` from the store's own blob files (what the
control plane's origin serves), and the folder assembled only once every file is there."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from superollama.cluster.blobs import BlobSource, NodeBlobs, read_blob_chunk
from superollama.cluster.folders import (
    FolderPlan,
    assemble_folder,
    complete_folder,
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

    assert await copies.place(_Node("gamma", "n2", None), artifact) == artifact  # reads the control plane's
    stray = Artifact(name="smol:hf", format="safetensors", path=adapter)  # not the folder it makes
    with pytest.raises(ModelLoadFailed, match=r"smol:hf cannot be copied to node beta: .*does not describe"):
        await copies.place(_Node("beta", "n1", "/beta"), stray)
