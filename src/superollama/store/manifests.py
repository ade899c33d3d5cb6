"""Manifests: one JSON file per version at ``<root>/manifests/[host/][namespace/]model/tag``.

::

    {"schemaVersion": 2, "name": "smollm2:latest", "format": "gguf",
     "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:…",
                 "size": 98362432, "filename": "SmolLM2-135M-Instruct.Q4_1.gguf"}],
     "metadata": {…}, "source": "file:///…", "createdAt": "2025-01-01T00:00:00+00:00",
     "storageRoot": "/mnt/nvme"}

``storageRoot`` (absent: the home) is the storage root whose ``blobs/`` holds the version's files.

Writes are atomic (a temp file in ``<root>/tmp/`` then ``os.replace``). The file's location, not its
``name`` field, says which version it is.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from superollama.core import Layer, Manifest, ModelRef, NameError_
from superollama.errors import Conflict, InvalidModelName, ModelNotFound, StoreError

__all__ = ["SCHEMA_VERSION", "ManifestStore", "as_ref", "manifest_from_json", "manifest_to_json"]

SCHEMA_VERSION = 2
_DIGEST_IN_TEXT = re.compile(rb"sha256[:-]([0-9a-f]{64})", re.IGNORECASE)
log = logging.getLogger(__name__)


def as_ref(name: ModelRef | str) -> ModelRef:
    """A ``ModelRef`` from either form; a bad name is ``InvalidModelName``."""
    if isinstance(name, ModelRef):
        return name
    try:
        return ModelRef.parse(name)
    except NameError_ as exc:
        raise InvalidModelName(str(exc), param="model") from exc


def manifest_to_json(manifest: Manifest) -> bytes:
    created = manifest.created_at or datetime.now(UTC)
    doc: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "name": manifest.name,
        "format": manifest.format,
        "layers": [
            {"mediaType": la.media_type, "digest": la.digest, "size": la.size, "filename": la.filename}
            for la in manifest.layers
        ],
        "metadata": dict(manifest.metadata),
        "source": manifest.source,
        "createdAt": created.isoformat(),
    }
    if manifest.storage_root is not None:
        doc["storageRoot"] = str(manifest.storage_root)
    try:
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise StoreError(f"manifest of {manifest.name} is not JSON-serialisable: {exc}") from exc


def manifest_from_json(data: bytes, *, name: str | None = None) -> Manifest:
    """Parse a manifest; ``name`` (from the file's location) overrides the stored one."""
    try:
        doc = orjson.loads(data)
        layers = tuple(
            Layer(
                media_type=str(la["mediaType"]),
                digest=str(la["digest"]),
                size=int(la["size"]),
                filename=la.get("filename"),
            )
            for la in doc["layers"]
        )
        created = doc.get("createdAt")
        root = doc.get("storageRoot")
        return Manifest(
            name=name or str(doc["name"]),
            format=str(doc.get("format", "")),
            layers=layers,
            metadata=dict(doc.get("metadata") or {}),
            source=str(doc.get("source", "")),
            created_at=datetime.fromisoformat(created) if created else None,
            storage_root=Path(root) if isinstance(root, str) and root else None,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"corrupt manifest {name or ''}: {exc}") from exc


class ManifestStore:
    """The ``manifests/`` folder of a store root. Blocking but small file I/O."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.dir = self.root / "manifests"
        self.tmp_dir = self.root / "tmp"

    def path(self, name: ModelRef | str) -> Path:
        return self.dir.joinpath(*as_ref(name).path_parts)

    def exists(self, name: ModelRef | str) -> bool:
        return self.path(name).is_file()

    def write(self, manifest: Manifest) -> Manifest:
        """Store ``manifest`` under its (canonicalised) name, atomically; return what was written."""
        ref = as_ref(manifest.name)
        manifest = replace(manifest, name=str(ref), created_at=manifest.created_at or datetime.now(UTC))
        data = manifest_to_json(manifest)
        dest = self.path(ref)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"manifest-{uuid.uuid4().hex}.json"
        try:
            with tmp.open("xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise Conflict(f"cannot store {ref}: its path collides with another model's ({exc})") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return manifest

    def read(self, name: ModelRef | str) -> Manifest:
        ref = as_ref(name)
        try:
            data = self.path(ref).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ModelNotFound(f"model '{ref}' not found", param="model") from None
        return manifest_from_json(data, name=str(ref))

    def delete(self, name: ModelRef | str) -> None:
        ref = as_ref(name)
        path = self.path(ref)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ModelNotFound(f"model '{ref}' not found", param="model") from None
        parent = path.parent
        while parent != self.dir and parent.is_relative_to(self.dir):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def _files(self) -> list[tuple[ModelRef, Path]]:
        found: list[tuple[ModelRef, Path]] = []
        for dirpath, _dirs, files in os.walk(self.dir):
            for fname in files:
                path = Path(dirpath) / fname
                parts = path.relative_to(self.dir).parts
                if fname.startswith(".") or not 2 <= len(parts) <= 4:
                    continue
                try:
                    ref = ModelRef.parse("/".join(parts[:-1]) + ":" + parts[-1])
                except NameError_:
                    continue
                if ref.path_parts == parts:
                    found.append((ref, path))
        return sorted(found, key=lambda item: str(item[0]))

    def list(self) -> list[Manifest]:
        """Every readable manifest, sorted by name; unreadable files are logged and skipped."""
        out: list[Manifest] = []
        for ref, path in self._files():
            try:
                out.append(manifest_from_json(path.read_bytes(), name=str(ref)))
            except (OSError, StoreError) as exc:
                log.warning("skipping manifest %s: %s", path, exc)
        return out

    def references(self) -> tuple[dict[Path | None, set[str]], set[str]]:
        """Digests referenced per storage root (``None``: the home), and the digests of manifests that
        fail to parse, which are protected in every root (their root cannot be known)."""
        by_root: dict[Path | None, set[str]] = {}
        anywhere: set[str] = set()
        for ref, path in self._files():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            try:
                manifest = manifest_from_json(data, name=str(ref))
            except StoreError:
                anywhere.update(f"sha256:{m.decode().lower()}" for m in _DIGEST_IN_TEXT.findall(data))
                continue
            digests = by_root.setdefault(manifest.storage_root, set())
            digests.update(la.digest for la in manifest.layers)
        return by_root, anywhere

    def referenced_digests(self) -> set[str]:
        """Digests some manifest references, found by scanning each file's text, so that a manifest
        that fails to parse still protects every blob it mentions from garbage collection."""
        refs: set[str] = set()
        for _ref, path in self._files():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            refs.update(f"sha256:{m.decode().lower()}" for m in _DIGEST_IN_TEXT.findall(data))
        return refs
