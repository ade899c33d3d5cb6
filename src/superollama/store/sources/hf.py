"""``hf://ORG/REPO[@REV][:FILE_OR_QUANT]``: a GGUF file or a safetensors model folder from the HF hub.

Plain HTTP against the hub's API (what ``huggingface_hub`` does), honouring the hub's own environment
variables when no value is given: ``HF_ENDPOINT`` (default https://huggingface.co) and ``HF_TOKEN`` (sent
as ``Authorization: Bearer``).

1. ``GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`` → ``sha`` (the commit every file is then
   fetched at) and ``siblings`` (``rfilename``, ``size``, ``lfs.sha256``).
2. Pick the files: with ``:FILE`` that file; with ``:QUANT`` the one GGUF whose name contains it (case-
   insensitive; an ambiguity or no match lists the candidates); with no selector the only GGUF (or the
   Q4_K_M one among several), or, when the repo has no GGUF, the safetensors model folder (config,
   tokenizer, weights incl. shards + index, sentence-transformers modules). A GGUF's ``mmproj-*.gguf``
   beside it (a vision model's projector) is never the model; it comes along as the projector layer.
3. Files download from ``{endpoint}/{repo}/resolve/{commit}/{path}``; LFS files are checked against their
   sha256, the others against their size.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, ClassVar
from urllib.parse import quote

import aiohttp

from superollama.core import MEDIA_MODEL
from superollama.core.images import MEDIA_PROJECTOR
from superollama.errors import InvalidRequest, SourceNotFound, StoreError
from superollama.store.sources import _http
from superollama.store.sources.base import (
    MEDIA_FILE,
    Body,
    RetryPolicy,
    SourceFile,
    SourcePlan,
    safe_relpath,
    split_scheme,
)

__all__ = [
    "DEFAULT_HF_ENDPOINT",
    "HfFile",
    "HfSource",
    "folder_files",
    "is_projector",
    "parse_hf_ref",
    "pick_gguf",
    "pick_projector",
]

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_QUANT = "Q4_K_M"
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
_MODULE_DIR = re.compile(r"^\d+_[A-Za-z0-9_]+$")  # sentence-transformers modules: 1_Pooling, 2_Dense …
_FOLDER_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja", ".tiktoken")
_MODULE_SUFFIXES = (".json", ".safetensors", ".txt")


@dataclass(frozen=True)
class HfFile:
    """One file of a repo at a commit, as the hub lists it."""

    path: str
    size: int | None = None
    sha256: str | None = None  # "sha256:<hex>" of an LFS file
    blob_id: str | None = None  # the git blob id: the hub's ETag for a file kept in git (not LFS)

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


def parse_hf_ref(ref: str) -> tuple[str, str, str | None]:
    """``(repo, revision, selector)`` from ``hf://ORG/REPO[@REV][:FILE_OR_QUANT]`` (revision ``main``)."""
    scheme, rest = split_scheme(ref)
    if scheme != "hf":
        raise InvalidRequest(f"not an hf:// reference: {ref!r}", param="source")
    head, _, selector = rest.partition(":")
    repo, _, revision = head.partition("@")
    parts = repo.strip("/").split("/")
    if not 1 <= len(parts) <= 2 or not all(_REPO_PART.match(p) for p in parts):
        raise InvalidRequest(f"invalid Hugging Face repo in {ref!r}: expected hf://ORG/REPO", param="source")
    return "/".join(parts), revision or "main", selector or None


def _matches(quant: str, name: str) -> bool:
    """``quant`` in ``name`` as a whole token (``Q4_K`` is not in ``Q4_K_M``, ``Q4_0`` not in ``IQ4_0``)."""
    return re.search(rf"(?<![a-z0-9]){re.escape(quant.lower())}(?![a-z0-9_])", name.lower()) is not None


def _listing(files: Iterable[HfFile]) -> str:
    names = sorted(f.path for f in files)
    return ", ".join(names[:40]) + (f" … ({len(names)} in all)" if len(names) > 40 else "") or "none"


def pick_gguf(repo: str, files: list[HfFile], selector: str | None) -> HfFile | None:
    """The GGUF file ``selector`` names (a file name or a quantization); None: no GGUF, take the folder."""
    ggufs = [f for f in files if f.name.lower().endswith(".gguf") and not is_projector(f)]
    if selector is not None:
        exact = [f for f in files if selector in (f.path, f.name)]
        if len(exact) == 1:
            if not exact[0].name.lower().endswith(".gguf"):
                raise InvalidRequest(f"hf://{repo}:{selector} is not a GGUF file: only GGUF files pull alone")
            return _whole(exact[0])
        if "/" in selector or selector.lower().endswith(".gguf"):
            raise SourceNotFound(f"hf://{repo}: no file {selector!r}; GGUF files: {_listing(ggufs)}")
        candidates = [f for f in ggufs if selector.lower() in f.name.lower()]
        if len(candidates) > 1:
            candidates = [f for f in candidates if _matches(selector, f.name)] or candidates
        if not candidates:
            raise SourceNotFound(
                f"hf://{repo}: no GGUF file matches {selector!r}; GGUF files: {_listing(ggufs)}"
            )
        if len(candidates) > 1:
            raise InvalidRequest(
                f"hf://{repo}: {selector!r} matches several GGUF files: {_listing(candidates)}; "
                f"name one (hf://{repo}:FILE)"
            )
        return _whole(candidates[0])
    if len(ggufs) == 1:
        return _whole(ggufs[0])
    if len(ggufs) > 1:
        default = [f for f in ggufs if _matches(DEFAULT_QUANT, f.name)]
        if len(default) == 1:
            return _whole(default[0])
        raise InvalidRequest(
            f"hf://{repo} has several GGUF files: {_listing(ggufs)}; pick one with hf://{repo}:QUANT or :FILE"
        )
    return None


def is_projector(file: HfFile) -> bool:
    """A vision model's projector GGUF (``mmproj-….gguf``, the name llama.cpp's converter gives it)."""
    name = file.name.lower()
    return name.endswith(".gguf") and "mmproj" in name


def pick_projector(files: list[HfFile]) -> HfFile | None:
    """The projector to pull with a GGUF model: the only one, else the f16 one, else the first by name."""
    found = sorted((f for f in files if is_projector(f)), key=lambda f: f.path)
    if len(found) > 1:
        found = [f for f in found if "f16" in f.name.lower()] or found
    return found[0] if found else None


def _whole(file: HfFile) -> HfFile:
    if _SPLIT_GGUF.search(file.name):
        raise InvalidRequest(f"{file.path} is one part of a split GGUF: split GGUFs are not supported yet")
    return file


def folder_files(repo: str, files: list[HfFile]) -> list[HfFile]:
    """The files a safetensors model folder needs: config, tokenizer, generation config, weights (shards
    and index too), sentence-transformers modules; not READMEs, other weight formats or exports."""
    keep: list[HfFile] = []
    for f in files:
        parts = PurePosixPath(f.path).parts
        name = f.name.lower()
        top = len(parts) == 1 and name.endswith(_FOLDER_SUFFIXES) and not name.startswith(".")
        module = len(parts) == 2 and _MODULE_DIR.match(parts[0]) and name.endswith(_MODULE_SUFFIXES)
        if top or module:
            keep.append(f)
    names = {f.path for f in keep}
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise InvalidRequest(
            f"hf://{repo} has no GGUF file and no safetensors model (config.json + *.safetensors); "
            f"files: {_listing(files)}"
        )
    return sorted(keep, key=lambda f: f.path)


def _siblings(info: Mapping[str, Any]) -> list[HfFile]:
    out: list[HfFile] = []
    for sib in info.get("siblings") or []:
        lfs = sib.get("lfs") or {}
        sha = lfs.get("sha256") or lfs.get("oid")
        size = lfs.get("size", sib.get("size"))
        out.append(
            HfFile(
                path=str(sib["rfilename"]),
                size=int(size) if size is not None else None,
                sha256=f"sha256:{str(sha).lower()}" if sha else None,
                blob_id=str(sib["blobId"]) if sib.get("blobId") else None,
            )
        )
    return out


def _planned(resolve_url: str, f: HfFile, filename: str, media: str) -> SourceFile:
    url = f"{resolve_url}/{quote(f.path)}"
    # Without an LFS sha256, the git blob id (the ETag the hub sends for such a file) lets concurrent
    # pulls share the download and a resume check with If-Range that the bytes are the same.
    validator = f'"{f.blob_id}"' if f.blob_id and not f.sha256 else None
    return SourceFile(
        filename=filename, location=url, size=f.size, digest=f.sha256, media_type=media, validator=validator
    )


class HfSource:
    """The Hugging Face hub (or a mirror at ``endpoint``)."""

    scheme: ClassVar[str] = "hf"

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.token = token
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    def _base(self) -> str:
        return (self.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")

    def _headers(self) -> dict[str, str]:
        token = self.token or os.environ.get("HF_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def resolve(self, ref: str) -> SourcePlan:
        repo, revision, selector = parse_hf_ref(ref)
        base = self._base()
        info = await _http.get_json(
            f"{base}/api/models/{repo}/revision/{quote(revision, safe='')}?blobs=true",
            headers=self._headers(),
            timeout=self.timeout,
            retry=self.retry,
            what=f"hf://{repo}@{revision}",
            hint="a private or gated repo needs HF_TOKEN",
        )
        commit = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(commit, str) or not commit:
            raise StoreError(f"hf://{repo}@{revision}: the hub's answer names no commit")
        files = _siblings(info)
        meta = {"hf": {"repo": repo, "revision": revision, "commit": commit}}
        gguf = pick_gguf(repo, files, selector)
        if gguf is not None:
            url = f"{base}/{repo}/resolve/{commit}"
            planned_files = [_planned(url, gguf, gguf.name, MEDIA_MODEL)]
            projector = pick_projector(files)
            if projector is not None:  # a vision model: its projector travels with it, as Ollama's does
                planned_files.append(_planned(url, projector, projector.name, MEDIA_PROJECTOR))
            source = f"hf://{repo}@{commit}:{gguf.path}"
            return SourcePlan(source=source, format="gguf", files=tuple(planned_files), metadata=meta)
        chosen = folder_files(repo, files)
        url = f"{base}/{repo}/resolve/{commit}"
        planned = tuple(_planned(url, f, safe_relpath(f.path), MEDIA_FILE) for f in chosen)
        return SourcePlan(source=f"hf://{repo}@{commit}", format="safetensors", files=planned, metadata=meta)

    def open_at(self, file: SourceFile, offset: int) -> AbstractAsyncContextManager[Body]:
        return _http.open_range(
            file.location,
            offset=offset,
            validator=file.validator,
            headers=self._headers(),
            timeout=self.timeout,
            what=file.location,
        )

    async def open(self, file: SourceFile) -> AsyncGenerator[bytes, None]:
        async with self.open_at(file, 0) as body, aclosing(body.chunks) as chunks:
            async for chunk in chunks:
                yield chunk
