"""``ollama://[HOST/]NAMESPACE/MODEL:TAG`` (and bare ``llama3:8b``): the Ollama registry protocol.

``llama3:8b`` is ``registry.ollama.ai/library/llama3:8b``. The registry speaks the Docker distribution API:

1. ``GET {registry}/v2/{namespace}/{model}/manifests/{tag}``
   (``Accept: application/vnd.docker.distribution.manifest.v2+json``) → ``config`` + ``layers``, each with
   ``mediaType``, ``digest`` and ``size``;
2. ``GET {registry}/v2/{namespace}/{model}/blobs/{digest}`` for each (redirects followed; resumable).

Every layer is kept as a layer (model, template, params, system, adapter, projector, license, and the config
blob); the store reads the small text ones into the manifest's metadata (``layer_metadata``). The registry
of the default host is a constructor argument (tests point it at a stand-in on loopback).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import orjson

from superollama.core import Layer, ModelRef, NameError_
from superollama.errors import InvalidRequest, StoreError
from superollama.store.blobs import normalize_digest
from superollama.store.sources import _http
from superollama.store.sources.base import Body, RetryPolicy, SourceFile, SourcePlan, split_scheme

__all__ = [
    "DEFAULT_OLLAMA_HOST",
    "DEFAULT_OLLAMA_REGISTRY",
    "MANIFEST_ACCEPT",
    "OllamaName",
    "OllamaSource",
    "layer_metadata",
    "parse_ollama_name",
    "plan_files",
]

DEFAULT_OLLAMA_HOST = "registry.ollama.ai"
DEFAULT_OLLAMA_REGISTRY = f"https://{DEFAULT_OLLAMA_HOST}"
DEFAULT_NAMESPACE = "library"
MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_PREFIX = "application/vnd.ollama.image."
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
_TEXT_LAYERS = {"template": "template", "system": "system", "license": "license"}
_MAX_TEXT = 1 << 20  # a template or system prompt larger than this is left in its layer only


@dataclass(frozen=True)
class OllamaName:
    """``host/namespace/model:tag`` with Ollama's defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def repository(self) -> str:
        return f"{self.namespace}/{self.model}"

    @property
    def short(self) -> str:
        """The name Ollama shows: without the default host, and without ``library/`` there."""
        if self.host == DEFAULT_OLLAMA_HOST:
            prefix = "" if self.namespace == DEFAULT_NAMESPACE else f"{self.namespace}/"
            return f"{prefix}{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def parse_ollama_name(text: str) -> OllamaName:
    """``llama3:8b`` → ``registry.ollama.ai/library/llama3:8b``; ``host/ns/model:tag`` as given."""
    try:
        ref = ModelRef.parse(text)
    except NameError_ as exc:
        raise InvalidRequest(f"invalid Ollama model name {text!r}: {exc}", param="source") from exc
    return OllamaName(ref.host or DEFAULT_OLLAMA_HOST, ref.namespace or DEFAULT_NAMESPACE, ref.model, ref.tag)


def plan_files(doc: Any, locate: Callable[[str], str], what: str) -> tuple[SourceFile, ...]:
    """The files of a registry manifest (the config blob first, then the layers in order)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise StoreError(f"{what}: not an image manifest (no layers)")
    entries = ([doc["config"]] if isinstance(doc.get("config"), dict) else []) + list(doc["layers"])
    files: list[SourceFile] = []
    for entry in entries:
        try:
            media, digest, size = str(entry["mediaType"]), str(entry["digest"]), int(entry["size"])
            digest = normalize_digest(digest)
        except (KeyError, TypeError, ValueError, InvalidRequest) as exc:
            raise StoreError(f"{what}: malformed layer {entry!r}") from exc
        kind = media.removeprefix(MEDIA_PREFIX) if media.startswith(MEDIA_PREFIX) else "config"
        files.append(
            SourceFile(filename=kind, location=locate(digest), size=size, digest=digest, media_type=media)
        )
    if not any(f.media_type == f"{MEDIA_PREFIX}model" for f in files):
        raise StoreError(f"{what}: the manifest has no model layer")
    return tuple(files)


def layer_metadata(layers: Iterable[Layer], read: Callable[[str], bytes]) -> dict[str, Any]:
    """Metadata from an Ollama image's small layers: template, system, params, license, adapters, config.

    ``read(digest)`` returns a stored blob's bytes. Layers of other media types are ignored.
    """
    meta: dict[str, Any] = {}
    for layer in layers:
        kind = layer.media_type.removeprefix(MEDIA_PREFIX)
        if layer.media_type == MEDIA_CONFIG and layer.size <= _MAX_TEXT:
            config = _json(read(layer.digest))
            if isinstance(config, dict):
                keep = ("model_format", "model_family", "model_families", "model_type", "file_type")
                meta["ollama"] = {k: config[k] for k in keep if k in config}
        elif not layer.media_type.startswith(MEDIA_PREFIX):
            continue
        elif kind in _TEXT_LAYERS and layer.size <= _MAX_TEXT:
            text = read(layer.digest).decode("utf-8", "replace")
            key = _TEXT_LAYERS[kind]
            meta[key] = f"{meta[key]}\n\n{text}" if key == "license" and key in meta else text
        elif kind == "params" and layer.size <= _MAX_TEXT:
            params = _json(read(layer.digest))
            if isinstance(params, dict):
                meta["params"] = params
        elif kind in ("adapter", "projector"):
            meta.setdefault(f"{kind}s", []).append(layer.digest)
    return meta


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


class OllamaSource:
    """An Ollama registry: ``registry`` serves the default host (registry.ollama.ai); other hosts in a
    reference are reached over https."""

    scheme: ClassVar[str] = "ollama"

    def __init__(
        self,
        *,
        registry: str = DEFAULT_OLLAMA_REGISTRY,
        timeout: aiohttp.ClientTimeout | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.registry = registry.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    def base_url(self, name: OllamaName) -> str:
        return self.registry if name.host == DEFAULT_OLLAMA_HOST else f"https://{name.host}"

    async def resolve(self, ref: str) -> SourcePlan:
        scheme, rest = split_scheme(ref)
        if scheme != "ollama":
            raise InvalidRequest(f"not an ollama:// reference: {ref!r}", param="source")
        name = parse_ollama_name(rest)
        base = self.base_url(name)
        what = f"ollama://{name}"
        doc = await _http.get_json(
            f"{base}/v2/{name.repository}/manifests/{name.tag}",
            headers={"Accept": MANIFEST_ACCEPT},
            timeout=self.timeout,
            retry=self.retry,
            what=what,
        )
        files = plan_files(doc, lambda digest: f"{base}/v2/{name.repository}/blobs/{digest}", what)
        config = files[0] if files[0].media_type == MEDIA_CONFIG else None
        model_format = "gguf"
        if config is not None and (config.size or 0) <= _MAX_TEXT:
            conf = await _http.get_json(config.location, timeout=self.timeout, retry=self.retry, what=what)
            if isinstance(conf, dict) and conf.get("model_format"):
                model_format = str(conf["model_format"])
        return SourcePlan(source=f"ollama://{name}", format=model_format, files=files)

    def open_at(self, file: SourceFile, offset: int) -> AbstractAsyncContextManager[Body]:
        return _http.open_range(file.location, offset=offset, timeout=self.timeout, what=file.location)

    async def open(self, file: SourceFile) -> AsyncGenerator[bytes, None]:
        async with self.open_at(file, 0) as body, aclosing(body.chunks) as chunks:
            async for chunk in chunks:
                yield chunk
