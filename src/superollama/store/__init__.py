"""The on-disk model store: content-addressed blobs, manifests, sources, and the GGUF header reader.

::

    <root>/blobs/sha256-<hex>                         content-addressed files (Ollama's layout)
    <root>/manifests/[host/][namespace/]model/tag     one JSON manifest per version
    <root>/tmp/                                       partial writes, moved into place atomically
"""

from superollama.store.blobs import Blob, BlobStore, hash_file, normalize_digest, short_digest
from superollama.store.gguf import GgufInfo, as_metadata, human_parameters, is_gguf, read_gguf_metadata
from superollama.store.manifests import ManifestStore, manifest_from_json, manifest_to_json
from superollama.store.sources import FileSource, Source, SourceFile, SourcePlan
from superollama.store.store import ModelStore, ProgressCallback

__all__ = [
    "Blob",
    "BlobStore",
    "FileSource",
    "GgufInfo",
    "ManifestStore",
    "ModelStore",
    "ProgressCallback",
    "Source",
    "SourceFile",
    "SourcePlan",
    "as_metadata",
    "hash_file",
    "human_parameters",
    "is_gguf",
    "manifest_from_json",
    "manifest_to_json",
    "normalize_digest",
    "read_gguf_metadata",
    "short_digest",
]
