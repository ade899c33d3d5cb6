"""``ollama-dir:///path/to/.ollama/models#MODEL:TAG``: a model already in a local Ollama models directory.

Ollama keeps ``manifests/<host>/<namespace>/<model>/<tag>`` (the registry's manifest JSON) and
``blobs/sha256-<hex>`` — immutable, content-addressed files. This source plans the same layers as
``ollama://`` would, and offers each blob as ``linkable``: the store hard-links it into its own ``blobs/``
after checking its digest (a copy, with a log note, when the two directories are on different filesystems).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote

import orjson

from superollama.errors import InvalidRequest, SourceNotFound, StoreError
from superollama.store.blobs import read_chunks
from superollama.store.sources.base import SourceFile, SourcePlan, split_scheme
from superollama.store.sources.ollama import MEDIA_CONFIG, OllamaName, parse_ollama_name, plan_files

__all__ = ["OllamaDirSource", "list_ollama_models"]


def list_ollama_models(models_dir: str | os.PathLike[str]) -> list[OllamaName]:
    """Every model an Ollama models directory holds (``manifests/host/namespace/model/tag``)."""
    root = Path(models_dir) / "manifests"
    found: list[OllamaName] = []
    for path in sorted(root.glob("*/*/*/*")):
        if path.is_file() and not path.name.startswith("."):
            host, namespace, model, tag = path.relative_to(root).parts
            try:
                found.append(parse_ollama_name(f"{host}/{namespace}/{model}:{tag}"))
            except InvalidRequest:
                continue  # a name outside the grammar we keep: skipped
    return found


class OllamaDirSource:
    """A local Ollama models directory (``~/.ollama/models``)."""

    scheme: ClassVar[str] = "ollama-dir"

    async def resolve(self, ref: str) -> SourcePlan:
        scheme, rest = split_scheme(ref)
        location, _, fragment = rest.partition("#")
        if scheme != self.scheme or not location.startswith("/"):
            raise InvalidRequest(f"expected ollama-dir:///abs/path/to/models#MODEL:TAG, got {ref!r}")
        if not fragment:
            raise InvalidRequest(f"name the model after '#': ollama-dir://{location}#llama3:8b")
        models = Path(unquote(location))
        name = parse_ollama_name(unquote(fragment))
        what = f"{models} {name.short}"
        manifest = models / "manifests" / name.host / name.namespace / name.model / name.tag
        try:
            data = await asyncio.to_thread(manifest.read_bytes)
            doc = orjson.loads(data)
        except (FileNotFoundError, NotADirectoryError):
            raise SourceNotFound(f"no model {name.short} in {models} (no {manifest})") from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise StoreError(f"{what}: unreadable manifest {manifest}: {exc}") from exc
        blobs = models / "blobs"
        files = plan_files(doc, lambda digest: str(blobs / digest.replace(":", "-")), what)
        missing = [f.digest for f in files if not await asyncio.to_thread(Path(f.location).is_file)]
        if missing:
            raise SourceNotFound(f"{what}: blobs missing from {blobs}: {', '.join(map(str, missing))}")
        model_format = "gguf"
        config = files[0] if files[0].media_type == MEDIA_CONFIG else None
        if config is not None and (config.size or 0) <= 1 << 20:
            try:
                conf = orjson.loads(await asyncio.to_thread(Path(config.location).read_bytes))
                model_format = str(conf.get("model_format") or model_format)
            except (OSError, orjson.JSONDecodeError, AttributeError):
                pass
        return SourcePlan(source=f"ollama-dir://{models}#{name}", format=model_format, files=files)

    def linkable(self, file: SourceFile) -> Path | None:
        return Path(file.location)

    async def open(self, file: SourceFile) -> AsyncGenerator[bytes, None]:
        try:
            async with aclosing(read_chunks(Path(file.location))) as chunks:
                async for chunk in chunks:
                    yield chunk
        except FileNotFoundError:
            raise SourceNotFound(f"no such file: {file.location}") from None
