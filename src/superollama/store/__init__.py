"""The on-disk model store: content-addressed blobs, manifests, sources, and the GGUF header reader.

::

    <root>/blobs/sha256-<hex>                         content-addressed files (Ollama's layout)
    <root>/manifests/[host/][namespace/]model/tag     one JSON manifest per version
    <root>/models/sha256-<hex>/                       folder versions as directories of hard links
    <root>/blobs/*.partial                            blobs being written (and resumable downloads),
                                                      renamed into place atomically, on the blobs'
                                                      filesystem (blobs/ may be a mount point)
    <root>/tmp/                                       scratch: manifests and folders being written
    ROOT/blobs/sha256-<hex>                           blobs of the versions moved to a declared storage
                                                      root (roots.py); their manifests stay in the home
"""

from superollama.store.blobs import Blob, BlobStore, hash_file, normalize_digest, short_digest
from superollama.store.gguf import GgufInfo, as_metadata, human_parameters, is_gguf, read_gguf_metadata
from superollama.store.manifests import ManifestStore, manifest_from_json, manifest_to_json
from superollama.store.roots import HOME_ROOT, StorageRoot, StorageRoots
from superollama.store.sources import (
    DEFAULT_HF_ENDPOINT,
    DEFAULT_OLLAMA_REGISTRY,
    MEDIA_FILE,
    FileSource,
    HfSource,
    HttpSource,
    OllamaDirSource,
    OllamaSource,
    PlainHttpSource,
    RetryPolicy,
    Source,
    SourceFile,
    SourcePlan,
    default_sources,
    list_ollama_models,
)
from superollama.store.store import ModelStore, MoveResult, ProgressCallback

__all__ = [
    "DEFAULT_HF_ENDPOINT",
    "DEFAULT_OLLAMA_REGISTRY",
    "HOME_ROOT",
    "MEDIA_FILE",
    "Blob",
    "BlobStore",
    "FileSource",
    "GgufInfo",
    "HfSource",
    "HttpSource",
    "ManifestStore",
    "ModelStore",
    "MoveResult",
    "OllamaDirSource",
    "OllamaSource",
    "PlainHttpSource",
    "ProgressCallback",
    "RetryPolicy",
    "Source",
    "SourceFile",
    "SourcePlan",
    "StorageRoot",
    "StorageRoots",
    "as_metadata",
    "default_sources",
    "hash_file",
    "human_parameters",
    "is_gguf",
    "list_ollama_models",
    "manifest_from_json",
    "manifest_to_json",
    "normalize_digest",
    "read_gguf_metadata",
    "short_digest",
]
