"""Folder models (a safetensors model, a sentence-transformers folder): one layer per file, each layer
naming its path inside the folder (``filename``, subdirectories kept).

Runtimes want a directory, so ``materialize`` builds one out of the blobs: ``<root>/models/sha256-<hex>/``,
named by the digest of the folder's (path, digest) list, filled with hard links to the blobs (symlinks where
links are refused), built in ``tmp/`` and renamed into place in one step. Two names of the same files share
one folder; ``prune`` removes the folders no manifest describes any more.

``folder_metadata`` reads what placement and ``show`` need from ``config.json`` and the safetensors headers
(parameter count and dtypes, without loading a tensor).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import struct
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from superollama.core import Manifest
from superollama.core.images import VISION, is_vision_config
from superollama.errors import IntegrityError, StoreError
from superollama.store.blobs import BlobStore
from superollama.store.gguf import human_parameters
from superollama.store.sources.base import MEDIA_FILE, safe_relpath

__all__ = ["MODELS_DIR", "folder_key", "folder_metadata", "is_folder", "materialize", "prune"]

MODELS_DIR = "models"
_MAX_HEADER = 100 * 1024 * 1024


def is_folder(manifest: Manifest) -> bool:
    """Whether a version is a folder of files (rather than one model file)."""
    return any(layer.media_type == MEDIA_FILE for layer in manifest.layers)


def folder_key(manifest: Manifest) -> str:
    """``sha256-<hex>`` of the folder's sorted (path, digest) list and its storage root: same files in
    the same root, same folder (a version moved to another root gets a folder linking to its new blobs)."""
    lines = sorted(f"{la.filename}\t{la.digest}" for la in manifest.layers if la.media_type == MEDIA_FILE)
    if manifest.storage_root is not None:
        lines.append(f"root\t{manifest.storage_root}")
    return "sha256-" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def materialize(manifest: Manifest, blobs: BlobStore, root: Path, *, tmp_dir: Path | None = None) -> Path:
    """The folder of a folder version under ``root``, built from its blobs (in ``blobs``, maybe another
    storage root) on first use, in ``tmp_dir`` (default: the blobs' own), on ``root``'s disk (blocking)."""
    dest = root / MODELS_DIR / folder_key(manifest)
    if dest.is_dir():
        return dest
    tmp = (tmp_dir or blobs.tmp_dir) / f"models-{uuid.uuid4().hex}"
    try:
        for layer in manifest.layers:
            if layer.media_type != MEDIA_FILE or not layer.filename:
                continue
            src = blobs.path(layer.digest)
            if not src.is_file():
                what = f"blob {layer.digest} ({layer.filename}) of '{manifest.name}'"
                raise IntegrityError(f"{what} is missing")
            target = tmp / safe_relpath(layer.filename)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, target)
            except OSError:
                os.symlink(src, target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not a lost race with another builder of the same folder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def prune(root: Path, keep: Iterable[str]) -> list[str]:
    """Remove the folders under ``models/`` whose key is not in ``keep`` (blocking); return their keys."""
    base = root / MODELS_DIR
    wanted = set(keep)
    removed: list[str] = []
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name not in wanted and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file (tensor names → dtype, shape, offsets)."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise StoreError(f"{path.name}: truncated safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise StoreError(f"{path.name}: safetensors header of {n} bytes is not plausible")
        data = f.read(n)
    try:
        header = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StoreError(f"{path.name}: unreadable safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise StoreError(f"{path.name}: unreadable safetensors header")
    return header


def _json_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise StoreError(f"{path.name}: not JSON ({exc})") from exc
    return doc if isinstance(doc, dict) else {}


def folder_metadata(files: Mapping[str, Path]) -> dict[str, Any]:
    """Summary of a folder model from its files (relative name → path on disk); blocking."""
    config = _json_file(files.get("config.json"))
    tokenizer = _json_file(files.get("tokenizer_config.json"))
    params = 0
    dtypes: Counter[str] = Counter()
    for name, path in files.items():
        if not name.endswith(".safetensors"):
            continue
        for key, tensor in read_safetensors_header(path).items():
            if key == "__metadata__" or not isinstance(tensor, dict):
                continue
            n = math.prod(int(d) for d in tensor.get("shape") or [])
            params += n
            dtypes[str(tensor.get("dtype"))] += n
    architectures = config.get("architectures") or []
    meta: dict[str, Any] = {
        "architecture": config.get("model_type"),
        "architectures": architectures,
        "parameter_count": params,
        "parameter_size": human_parameters(params),
        "dtype": dtypes.most_common(1)[0][0] if dtypes else config.get("torch_dtype"),
        "context_length": config.get("max_position_embeddings"),
        "embedding_length": config.get("hidden_size"),
        "block_count": config.get("num_hidden_layers"),
        "head_count": config.get("num_attention_heads"),
        "head_count_kv": config.get("num_key_value_heads", config.get("num_attention_heads")),
        "vocab_size": config.get("vocab_size"),
        "sentence_transformers": "modules.json" in files,
        VISION: is_vision_config(config),  # an image-text model: it reads images
    }
    template = tokenizer.get("chat_template")
    if not isinstance(template, str) and files.get("chat_template.jinja") is not None:
        template = files["chat_template.jinja"].read_text(errors="replace")  # saved beside the processor
    if isinstance(template, str):
        meta["chat_template"] = template
    return meta
