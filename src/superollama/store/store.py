"""``ModelStore``: the node's model store — pull, copy, remove, verify, garbage-collect, list, show.

The one pull algorithm lives here; the offline CLI and the admin API both call ``ModelStore.pull``. Sources
(file, https/http, hf, ollama, ollama-dir) resolve a reference into a plan; ``Transfers`` fetches each file
once per blob (concurrent pulls share a download), resumably, verified, into ``blobs/``.

Storage roots (``roots.py``): a version's blobs live in one root, the home or one an admin declared;
its manifest (always in the home) names the root. Blobs are content-addressed per root: versions in the
same root that share a file (``cp``) share one blob there; ``move`` copies into the destination what it
lacks, switches the manifest, then collects the old root, where a blob goes only once no version uses it
there. A pull always lands in the home.

Consistency: within one process, a pull pins its blobs from ingest until its manifest is written, and
manifest writes, removals and garbage collection take one lock, so a GC never removes a blob a finished or
running pull references. Two processes sharing a root (a CLI pull beside a running server) are not
coordinated: run ``gc`` from one of them only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from superollama.core import Artifact, Layer, Manifest, ModelRef, Progress, VersionRecord
from superollama.core.images import MEDIA_PROJECTOR, VISION
from superollama.errors import IntegrityError, InvalidRequest, ModelExists, ModelNotFound, StoreError
from superollama.store.blobs import BlobStore, normalize_digest, short_digest
from superollama.store.folders import folder_key, folder_metadata, is_folder, materialize, prune
from superollama.store.gguf import as_metadata, read_gguf_metadata
from superollama.store.manifests import ManifestStore, as_ref
from superollama.store.relocate import copy_manifest_blobs
from superollama.store.roots import StorageRoot, StorageRoots
from superollama.store.sources import (
    DEFAULT_OLLAMA_REGISTRY,
    MEDIA_FILE,
    RetryPolicy,
    Source,
    SourceFile,
    SourcePlan,
    default_sources,
    list_ollama_models,
    safe_relpath,
    split_scheme,
)
from superollama.store.sources.ollama import layer_metadata
from superollama.store.transfer import Transfers, os_error

__all__ = ["ModelStore", "MoveResult", "ProgressCallback"]

ProgressCallback = Callable[[Progress], None]
# (storage root, digest): a blob in one root; the root is a manifest's ``storage_root`` (None: the home)
_Placed = tuple[Path | None, str]


@dataclass(frozen=True)
class MoveResult:
    """What a move did: where the version is now, where it was, and what happened to each blob."""

    name: str
    root: StorageRoot
    source: str  # the name of the root it came from
    copied: tuple[str, ...] = ()  # blobs written into the destination
    freed: tuple[str, ...] = ()  # blobs deleted from the source root (no other version used them)
    kept: tuple[str, ...] = ()  # blobs left in the source root for the versions still using them
    unchanged: bool = False  # it was in that root already


def _ignore(_: Progress) -> None:
    return None


class ModelStore:
    """Blobs + manifests under one root directory, fed by ``Source`` implementations chosen by scheme."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        sources: Iterable[Source] | None = None,
        ollama_registry: str = DEFAULT_OLLAMA_REGISTRY,
        hf_endpoint: str | None = None,
        hf_token: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        storage_roots: Iterable[tuple[str | None, str]] = (),
    ) -> None:
        """``sources`` replaces the built-in ones (file, https, http, hf, ollama, ollama-dir), which take
        ``ollama_registry`` (the base URL serving registry.ollama.ai), ``hf_endpoint``/``hf_token`` (else
        the hub's ``HF_ENDPOINT``/``HF_TOKEN``), ``retry`` and ``timeout``. ``storage_roots``: the
        declared roots besides the home, ``(name or None, absolute path)``."""
        self.root = Path(root)
        self.blobs = BlobStore(self.root)
        self.roots = StorageRoots(self.root, storage_roots)
        self._root_blobs: dict[Path, BlobStore] = {}
        self.manifests = ManifestStore(self.root)
        retry = retry or RetryPolicy()
        if sources is None:
            sources = default_sources(
                ollama_registry=ollama_registry,
                hf_endpoint=hf_endpoint,
                hf_token=hf_token,
                retry=retry,
                timeout=timeout,
            )
        self.sources: Mapping[str, Source] = {s.scheme: s for s in sources}
        self.transfers = Transfers(self.blobs, retry=retry)
        self._lock = asyncio.Lock()

    def source_for(self, ref: str) -> Source:
        scheme, _ = split_scheme(ref)
        try:
            return self.sources[scheme]
        except KeyError:
            known = ", ".join(sorted(self.sources))
            raise InvalidRequest(
                f"unknown source scheme {scheme!r} (known: {known})", param="source"
            ) from None

    # -- pull -------------------------------------------------------------------------------------------
    async def pull(
        self, source_ref: str, name: ModelRef | str, *, on_progress: ProgressCallback | None = None
    ) -> Manifest:
        """Fetch ``source_ref`` into the store as version ``name``; emit Ollama ``/api/pull`` progress.

        Every file becomes a verified blob before the manifest is written; on any failure no manifest is
        written and the blobs this pull added, unreferenced, are removed. A plan that cannot fit on the
        blobs' filesystem is refused before any byte is fetched (``InsufficientStorage``), and an OS error
        on the way (a disk that fills up) is one of our errors, never a bare ``OSError``.
        """
        try:
            return await self._pull(source_ref, name, on_progress)
        except OSError as exc:
            raise os_error(exc, f"pulling {source_ref}", self.blobs) from exc

    async def _pull(
        self, source_ref: str, name: ModelRef | str, on_progress: ProgressCallback | None
    ) -> Manifest:
        ref = as_ref(name)
        emit = on_progress or _ignore
        emit(Progress("pulling manifest"))
        source = self.source_for(source_ref)
        plan = await source.resolve(source_ref)
        if not plan.files:
            raise InvalidRequest(f"{source_ref}: nothing to pull")
        _check_folder(plan)
        await self.transfers.check_space(source, plan.files)
        pinned: list[str] = []
        added: list[str] = []
        try:
            layers = [await self._fetch(source, f, emit, pinned, added) for f in plan.files]
            emit(Progress("verifying sha256 digest"))
            metadata = await self._metadata(plan, layers)
            emit(Progress("writing manifest"))
            manifest = Manifest(
                name=str(ref),
                format=plan.format,
                layers=tuple(layers),
                metadata=metadata,
                source=plan.source,
                created_at=datetime.now(UTC),
            )
            async with self._lock:
                old = self._read_or_none(ref)
                manifest = await asyncio.to_thread(self.manifests.write, manifest)
                for digest in pinned:
                    self.blobs.unpin(digest)
                pinned.clear()
                if old is not None:
                    await self._collect(_placed(old))
        except BaseException:
            for digest in pinned:
                self.blobs.unpin(digest)
            if added:
                async with self._lock:
                    await self._collect({(None, d) for d in added})
            raise
        emit(Progress("success"))
        return manifest

    def _read_or_none(self, ref: ModelRef) -> Manifest | None:
        try:
            return self.manifests.read(ref)
        except (ModelNotFound, StoreError):
            return None

    async def _fetch(
        self, source: Source, file: SourceFile, emit: ProgressCallback, pinned: list[str], added: list[str]
    ) -> Layer:
        existed = bool(file.digest) and self.blobs.has(file.digest or "")
        label = f"pulling {short_digest(file.digest) if file.digest else file.filename}"

        def progress(done: int) -> None:
            emit(Progress(label, digest=file.digest, total=file.size, completed=done))

        blob = await self.transfers.fetch(source, file, progress)
        pinned.append(blob.digest)
        if not existed:
            added.append(blob.digest)
        if file.digest is None:  # learnt only now: one last event that names it
            emit(Progress(f"pulling {short_digest(blob.digest)}", blob.digest, blob.size, blob.size))
        return Layer(media_type=file.media_type, digest=blob.digest, size=blob.size, filename=file.filename)

    async def _metadata(self, plan: SourcePlan, layers: list[Layer]) -> dict[str, Any]:
        metadata: dict[str, Any] = dict(plan.metadata)
        metadata.update(await asyncio.to_thread(layer_metadata, layers, self._read_blob))
        if any(la.media_type == MEDIA_PROJECTOR for la in layers):
            metadata[VISION] = True  # a projector (mmproj) beside the GGUF: it reads images
        if plan.format == "gguf":
            model = Manifest(name="", format=plan.format, layers=tuple(layers)).model_layer
            info = await asyncio.to_thread(read_gguf_metadata, self.blobs.path(model.digest))
            metadata.update(as_metadata(info))
        elif any(la.media_type == MEDIA_FILE for la in layers):
            files = {la.filename: self.blobs.path(la.digest) for la in layers if la.filename}
            metadata.update(await asyncio.to_thread(folder_metadata, files))
        return metadata

    def _read_blob(self, digest: str) -> bytes:
        return self.blobs.path(digest).read_bytes()

    # -- built here ---------------------------------------------------------------------------------------
    async def add_folder(
        self,
        name: ModelRef | str,
        files: Mapping[str, Path],
        *,
        format: str,
        metadata: Mapping[str, Any],
        source: str,
    ) -> Manifest:
        """A folder version from files made on this node (a fine-tuned adapter): each file becomes a blob
        (hard-linked when it can be), then the manifest is written; ``ModelExists`` if the name is taken.
        ``files``: relative name in the folder → the file now."""
        ref = as_ref(name)
        for relative in files:
            safe_relpath(relative)
        async with self._lock:
            if self._read_or_none(ref) is not None:
                raise ModelExists(f"model '{ref}' already exists", param="model")
            layers = []
            pinned: list[str] = []
            try:
                for relative, path in sorted(files.items()):
                    blob = await self.blobs.adopt(path, pin=True)
                    pinned.append(blob.digest)
                    layers.append(Layer(MEDIA_FILE, blob.digest, blob.size, filename=relative))
                manifest = Manifest(
                    name=str(ref),
                    format=format,
                    layers=tuple(layers),
                    metadata=dict(metadata),
                    source=source,
                    created_at=datetime.now(UTC),
                )
                return await asyncio.to_thread(self.manifests.write, manifest)
            finally:
                for digest in pinned:
                    self.blobs.unpin(digest)

    # -- import ---------------------------------------------------------------------------------------
    async def import_ollama_models(
        self, models_dir: str | os.PathLike[str], *, on_progress: ProgressCallback | None = None
    ) -> list[Manifest]:
        """Import every model of a local Ollama models directory (``~/.ollama/models``) under Ollama's
        own names (``llama3:8b``), hard-linking its blobs (verified) instead of copying them."""
        root = await asyncio.to_thread(lambda: Path(models_dir).expanduser().absolute())
        if not await asyncio.to_thread((root / "manifests").is_dir):
            raise InvalidRequest(f"{root} is not an Ollama models directory (no manifests/)")
        imported: list[Manifest] = []
        for name in await asyncio.to_thread(list_ollama_models, root):
            ref = f"ollama-dir://{root}#{name}"
            imported.append(await self.pull(ref, name.short, on_progress=on_progress))
        return imported

    # -- copy / remove / gc -------------------------------------------------------------------------------
    async def copy(self, src: ModelRef | str, dst: ModelRef | str) -> Manifest:
        """A second name for the same blobs (no bytes copied); ``ModelExists`` if ``dst`` is taken."""
        src_ref, dst_ref = as_ref(src), as_ref(dst)
        async with self._lock:
            manifest = self.manifests.read(src_ref)
            if self.manifests.exists(dst_ref):
                raise ModelExists(f"model '{dst_ref}' already exists", param="destination")
            copied = replace(manifest, name=str(dst_ref), created_at=datetime.now(UTC))
            return await asyncio.to_thread(self.manifests.write, copied)

    async def remove(self, name: ModelRef | str, *, keep: Collection[str] = ()) -> set[str]:
        """Delete a version's manifest, then every blob no manifest references, in every root (an empty
        ``blobs/`` the store made in a declared root goes too); return the freed digests. ``keep``: digests
        never deleted from a declared root — the model files of versions other gateways pulled, whose
        manifests are in their homes, on a root they share with this one."""
        ref = as_ref(name)
        async with self._lock:
            old = self._read_or_none(ref)
            self.manifests.delete(ref)
            candidates = _placed(old) if old is not None else ()
            return await self._collect(candidates, everywhere=True, keep=keep)

    async def gc(self) -> set[str]:
        """Remove blobs no manifest references (and stale partial files); return the freed digests."""
        async with self._lock:
            for root in await asyncio.to_thread(self.roots.all):
                if root.is_home or root.usable:
                    await asyncio.to_thread(self.blobs_in(root.location).purge_tmp)
            return await self._collect((), everywhere=True)

    def blobs_in(self, location: Path | None) -> BlobStore:
        """The blobs of a storage root (None: the home). One ``BlobStore`` per root, so pins hold."""
        if location is None:
            return self.blobs
        blobs = self._root_blobs.get(location)
        if blobs is None:
            blobs = self._root_blobs[location] = BlobStore(location)
        return blobs

    async def _collect(
        self, candidates: Iterable[_Placed], *, everywhere: bool = False, keep: Collection[str] = ()
    ) -> set[str]:
        """Delete the unreferenced, unpinned blobs among ``candidates`` (with ``everywhere``: among all
        blobs of the home, of every usable declared root and of every root a manifest names), except the
        ``keep`` digests in declared roots; prune a declared root's ``blobs/`` once empty (never the root
        itself). Hold ``_lock``."""
        pool = {(loc, normalize_digest(d)) for loc, d in candidates}
        kept_shared = {normalize_digest(d) for d in keep}

        def run() -> set[str]:
            by_root, anywhere = self.manifests.references()
            if everywhere:
                usable = {r.location for r in self.roots.all() if r.usable}
                for loc in usable | set(by_root) | {None}:
                    pool.update((loc, d) for d in self.blobs_in(loc).iter_digests())
            freed: set[str] = set()
            for loc, digest in sorted(pool, key=lambda p: (str(p[0] or ""), p[1])):
                if digest in anywhere or digest in by_root.get(loc, ()):
                    continue
                if loc is not None and digest in kept_shared:
                    continue
                if self.blobs_in(loc).delete(digest):
                    freed.add(digest)
            for loc in {loc for loc, _ in pool if loc is not None}:
                _remove_if_empty(self.blobs_in(loc).dir)
            prune(self.root, {folder_key(m) for m in self.manifests.list() if is_folder(m)})
            return freed

        return await asyncio.to_thread(run)

    # -- read side ----------------------------------------------------------------------------------------
    async def verify(self, name: ModelRef | str) -> None:
        """Re-hash every blob of a version; ``IntegrityError`` names the first missing or corrupt one."""
        manifest = self.manifests.read(name)
        blobs = self.blobs_in(manifest.storage_root)
        for layer in manifest.layers:
            await blobs.verify(layer.digest, size=layer.size)

    def exists(self, name: ModelRef | str) -> bool:
        return self.manifests.exists(name)

    def list(self) -> list[Manifest]:
        return self.manifests.list()

    def show(self, name: ModelRef | str) -> Manifest:
        """The manifest of a version (``ModelNotFound`` if absent)."""
        return self.manifests.read(name)

    async def move(
        self, name: ModelRef | str, to: str, *, on_progress: ProgressCallback | None = None
    ) -> MoveResult:
        """Move a version's blobs to the storage root ``to`` (``home``, a declared root's name or exact
        path; anything else is ``InvalidRequest``). It keeps serving: the copy is verified before the
        manifest switches to it, and the old root loses only the blobs no other version uses there."""
        emit = on_progress or _ignore
        loop = asyncio.get_running_loop()

        def emit_from_thread(progress: Progress) -> None:  # the copy runs in a worker thread
            loop.call_soon_threadsafe(emit, progress)

        dest = await asyncio.to_thread(self.roots.resolve, to)
        async with self._lock:
            manifest = self.manifests.read(name)
            source = self.roots.name_of(manifest.storage_root)
            if manifest.storage_root == dest.location:
                emit(Progress(f"'{manifest.name}' is in storage root {dest.name} already"))
                emit(Progress("success"))
                return MoveResult(manifest.name, dest, source, unchanged=True)
            digests = {normalize_digest(la.digest) for la in manifest.layers}
            src, target = self.blobs_in(manifest.storage_root), self.blobs_in(dest.location)
            stop = threading.Event()
            copying = asyncio.ensure_future(
                asyncio.to_thread(copy_manifest_blobs, manifest, src, target, emit_from_thread, stop)
            )
            try:
                copied = await asyncio.shield(copying)
            except BaseException:  # failed or cancelled: the copy thread stops, and its copies go again
                stop.set()
                with contextlib.suppress(BaseException):
                    await copying
                await self._collect({(dest.location, d) for d in digests})
                raise
            emit(Progress(f"switching '{manifest.name}' to {dest.name}"))
            # the switch: one small atomic write, on the loop so that no cancellation can split it
            self.manifests.write(replace(manifest, storage_root=dest.location))
            freed = await self._collect({(manifest.storage_root, d) for d in digests})
        emit(Progress("success"))
        kept = tuple(sorted(digests - freed))
        return MoveResult(manifest.name, dest, source, tuple(copied), tuple(sorted(freed)), kept)

    def model_path(self, name: ModelRef | str) -> Path:
        """Where a runtime finds a version: its model blob, or for a folder version (safetensors) its
        folder (``model_dir``); ``IntegrityError`` if a blob is gone."""
        manifest = self.manifests.read(name)
        blobs = self.blobs_in(manifest.storage_root)
        if is_folder(manifest):
            return materialize(manifest, blobs, self.root, tmp_dir=self.blobs.tmp_dir)
        path = blobs.path(manifest.model_layer.digest)
        if not path.is_file():
            raise IntegrityError(f"blob {manifest.model_layer.digest} of '{manifest.name}' is missing")
        return path

    def model_dir(self, name: ModelRef | str) -> Path:
        """A folder version as a directory (``models/sha256-…/``, hard links to its blobs), built on first
        use; ``InvalidRequest`` for a single-file version."""
        manifest = self.manifests.read(name)
        if not is_folder(manifest):
            raise InvalidRequest(f"'{manifest.name}' is a single {manifest.format} file, not a folder")
        blobs = self.blobs_in(manifest.storage_root)
        return materialize(manifest, blobs, self.root, tmp_dir=self.blobs.tmp_dir)

    def artifact(self, name: ModelRef | str) -> Artifact:
        """A version as a runtime sees it: name, format, model file path, metadata (and the projector
        file of a GGUF vision model)."""
        manifest = self.manifests.read(name)
        projector = next((la for la in manifest.layers if la.media_type == MEDIA_PROJECTOR), None)
        blobs = self.blobs_in(manifest.storage_root)
        return Artifact(
            name=manifest.name,
            format=manifest.format,
            path=self.model_path(name),
            metadata=manifest.metadata,
            projector=None if projector is None else blobs.path(projector.digest),
        )

    def shared_artifact(self, version: VersionRecord) -> Artifact | None:
        """A single-file version pulled through another gateway, whose manifest is in that gateway's
        home: its model file found by the catalog's digest in one of this home's declared storage roots
        (a disk both gateways mount, where ``mv NAME --to ROOT`` put it). None when no root holds it. A
        vision model's projector is named by the manifest only: it is never served without it. Reading
        needs no usable (writable) root — a read-only mount serves — so the roots are not probed."""
        if version.format != "gguf" or version.metadata.get(VISION) is True:
            return None
        for location in sorted(self.roots.declared_paths()):
            blobs = self.blobs_in(location)
            if blobs.has(version.digest):
                return Artifact(
                    name=version.name,
                    format=version.format,
                    path=blobs.path(version.digest),
                    metadata=version.metadata,
                )
        return None

    def disk_usage(self) -> int:
        return self.blobs.disk_usage()


def _placed(manifest: Manifest) -> set[_Placed]:
    """The blobs a manifest references, each in its storage root."""
    return {(manifest.storage_root, la.digest) for la in manifest.layers}


def _remove_if_empty(directory: Path) -> None:
    """Remove a declared root's ``blobs/`` once nothing is left in it (the root itself stays)."""
    with contextlib.suppress(OSError):  # not empty, or already gone
        directory.rmdir()


def _check_folder(plan: SourcePlan) -> None:
    """A folder plan's file names must be safe relative paths, each once."""
    names = [f.filename for f in plan.files if f.media_type == MEDIA_FILE]
    for name in names:
        safe_relpath(name)
    if len(set(names)) != len(names):
        raise InvalidRequest(f"{plan.source}: the same file name twice in one folder")
