"""Loopback stand-ins of the Hugging Face hub, the Ollama registry and a plain file server, in one aiohttp
app on port 0, with the real services' URL layout:

- HF:     ``GET /api/models/{org}/{repo}/revision/{rev}[?blobs=true]``,
          ``GET|HEAD /{org}/{repo}/resolve/{rev}/{path}``
- Ollama: ``GET /v2/{ns}/{model}/manifests/{tag}``,
          ``GET /v2/{ns}/{model}/blobs/{digest}`` → 307 to ``/cdn/{digest}``
- plain:  ``GET|HEAD /files/{name}`` (and ``/files/{name}.sha256`` when a sidecar is set)

Every file is served with ``ETag``, ``Content-Length``, ``Range``/``If-Range`` (206, 416), and can be made to
misbehave: ``fail_times`` answers 503 first, ``cut_after`` closes the connection after N bytes (once),
``corrupt_at`` flips one byte, ``etag_after_cut`` changes the ETag when the cut happens, ``stall_at`` stops
sending (the connection stays open, silent) once the body reaches that byte, ``hide_length`` sends no
``Content-Length`` (chunked, so a client cannot know the size in advance). ``requests`` and ``sent``
record what was asked and how many body bytes went out per URL path.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of(source: Path | bytes) -> str:
    """``sha256:<hex>`` of a file (cached by path, size and mtime) or of bytes."""
    if isinstance(source, bytes):
        return "sha256:" + hashlib.sha256(source).hexdigest()
    st = source.stat()
    key = (str(source), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with source.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        _SHA_CACHE[key] = "sha256:" + h.hexdigest()
    return _SHA_CACHE[key]


def git_blob_id(source: Path | bytes) -> str:
    data = source if isinstance(source, bytes) else source.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Served:
    """One file the stand-in serves."""

    source: Path | bytes
    etag: str
    cut_after: int | None = None
    corrupt_at: int | None = None
    etag_after_cut: str | None = None
    fail_times: int = 0  # answer 503 to this many requests first
    delay: float = 0.0  # seconds to wait before each 1 MiB chunk (a slow link)
    stall_at: int | None = None  # go silent (connection open) when the body reaches this byte
    hide_length: bool = False  # no Content-Length: chunked, size unknown to the client

    @property
    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size

    def read(self, offset: int, n: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[offset : offset + n]
        with self.source.open("rb") as f:
            f.seek(offset)
            return f.read(n)


@dataclass
class Record:
    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class HfRepo:
    files: dict[str, Served]
    revisions: dict[str, str]  # branch or tag → commit
    lfs: set[str]
    token: str | None = None


@dataclass
class Hub:
    """The stand-in's state; ``url`` is set once it listens."""

    url: str = ""
    files: dict[str, Served] = field(default_factory=dict)  # URL path → file
    sidecars: dict[str, str] = field(default_factory=dict)  # URL path of the sidecar → text
    hf: dict[str, HfRepo] = field(default_factory=dict)
    ollama: dict[str, bytes] = field(default_factory=dict)  # "ns/model:tag" → manifest JSON
    requests: list[Record] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)

    # -- filling -----------------------------------------------------------------------------------------
    def add_file(self, name: str, source: Path | bytes, *, etag: str = '"v1"') -> Served:
        served = Served(source, etag)
        self.files[f"/files/{name}"] = served
        return served

    def add_hf_repo(
        self,
        repo: str,
        files: dict[str, Path | bytes],
        *,
        revisions: dict[str, str] | None = None,
        lfs: set[str] | None = None,
        token: str | None = None,
    ) -> HfRepo:
        lfs = {p for p in files if p.endswith((".gguf", ".safetensors"))} if lfs is None else lfs
        # the hub's ETag: the sha256 of an LFS file, the git blob id of the others
        served = {
            path: Served(src, f'"{sha256_of(src)[7:]}"' if path in lfs else f'"{git_blob_id(src)}"')
            for path, src in files.items()
        }
        hf = HfRepo(served, revisions or {"main": "a" * 40}, lfs, token)
        self.hf[repo] = hf
        return hf

    def add_ollama_model(
        self, name: str, layers: list[tuple[str, Path | bytes]], *, config: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """``name`` is ``ns/model:tag``; ``layers`` are (media type, bytes or file); returns the manifest."""
        conf = orjson.dumps(config or {"model_format": "gguf", "model_family": "llama"})
        entries = []
        for media, src in [(DOCKER_CONFIG, conf), *layers]:
            digest = sha256_of(src)
            served = Served(src, f'"{digest}"')
            self.files[f"/cdn/{digest}"] = served
            entries.append({"mediaType": media, "digest": digest, "size": served.size})
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": entries[0],
            "layers": entries[1:],
        }
        self.ollama[name] = orjson.dumps(manifest)
        return manifest

    # -- reading -----------------------------------------------------------------------------------------
    def gets(self, path: str) -> list[Record]:
        return [r for r in self.requests if r.method == "GET" and r.path == path]

    # -- serving -----------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/api/models/{org}/{repo}/revision/{rev}", self._hf_info)
        app.router.add_route("*", "/{org}/{repo}/resolve/{rev}/{path:.+}", self._hf_resolve)
        app.router.add_get("/v2/{ns}/{model}/manifests/{tag}", self._ollama_manifest)
        app.router.add_get("/v2/{ns}/{model}/blobs/{digest}", self._ollama_blob)
        app.router.add_route("*", "/cdn/{digest}", self._plain)
        app.router.add_route("*", "/files/{name:.+}", self._plain)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(
            Record(request.method, request.path, request.query_string, dict(request.headers))
        )
        result: web.StreamResponse = await handler(request)
        return result

    def _hf_repo(self, request: web.Request) -> HfRepo:
        repo = self.hf.get(f"{request.match_info['org']}/{request.match_info['repo']}")
        if repo is None:
            raise web.HTTPNotFound(text='{"error": "Repository not found"}')
        if repo.token and request.headers.get("Authorization") != f"Bearer {repo.token}":
            raise web.HTTPUnauthorized(text='{"error": "Invalid credentials"}')
        return repo

    def _commit(self, repo: HfRepo, rev: str) -> str:
        if rev in repo.revisions:
            return repo.revisions[rev]
        if rev in repo.revisions.values():
            return rev
        raise web.HTTPNotFound(text='{"error": "Invalid rev id"}')

    async def _hf_info(self, request: web.Request) -> web.Response:
        repo = self._hf_repo(request)
        commit = self._commit(repo, request.match_info["rev"])
        siblings = []
        for path, served in sorted(repo.files.items()):
            sib: dict[str, Any] = {"rfilename": path}
            if request.query.get("blobs") == "true":
                sib["size"] = served.size
                sib["blobId"] = served.etag.strip('"')  # (for an LFS file, the hub's is the pointer's)
                if path in repo.lfs:
                    sha = sha256_of(served.source)[7:]
                    sib["lfs"] = {"sha256": sha, "size": served.size, "pointerSize": 134}
            siblings.append(sib)
        name = f"{request.match_info['org']}/{request.match_info['repo']}"
        return web.json_response({"id": name, "sha": commit, "siblings": siblings})

    async def _hf_resolve(self, request: web.Request) -> web.StreamResponse:
        repo = self._hf_repo(request)
        self._commit(repo, request.match_info["rev"])
        served = repo.files.get(request.match_info["path"])
        if served is None:
            raise web.HTTPNotFound(text="Entry not found")
        return await self._send(request, request.path, served)

    async def _ollama_manifest(self, request: web.Request) -> web.Response:
        m = request.match_info
        doc = self.ollama.get(f"{m['ns']}/{m['model']}:{m['tag']}")
        if doc is None:
            raise web.HTTPNotFound(text='{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
        return web.Response(body=doc, content_type=DOCKER_MANIFEST)

    async def _ollama_blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        if f"/cdn/{digest}" not in self.files:
            raise web.HTTPNotFound(text='{"errors":[{"code":"BLOB_UNKNOWN"}]}')
        raise web.HTTPTemporaryRedirect(f"/cdn/{digest}")

    async def _plain(self, request: web.Request) -> web.StreamResponse:
        if request.path in self.sidecars:
            return web.Response(text=self.sidecars[request.path])
        served = self.files.get(request.path)
        if served is None:
            raise web.HTTPNotFound()
        return await self._send(request, request.path, served)

    async def _send(self, request: web.Request, key: str, served: Served) -> web.StreamResponse:
        if served.fail_times > 0:
            served.fail_times -= 1
            raise web.HTTPServiceUnavailable()
        size = served.size
        start, status = 0, 200
        ranged = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        if_range = request.headers.get("If-Range")
        if ranged and (if_range is None or if_range == served.etag):
            start, status = int(ranged.group(1)), 206
            if start >= size:
                raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
        resp = web.StreamResponse(status=status, headers={"ETag": served.etag, "Accept-Ranges": "bytes"})
        if status == 206:
            resp.headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        if served.hide_length:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = size - start
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        pos = start
        while pos < size:
            if served.delay:
                await asyncio.sleep(served.delay)  # a stand-in: a slow link (``Served.delay``)
            end = min(pos + (1 << 20), size)
            if served.stall_at is not None and pos >= served.stall_at:
                await request.wait_for_disconnection()  # silent until the client gives up and hangs up
                return resp
            if served.stall_at is not None and pos < served.stall_at:
                end = min(end, served.stall_at)
            chunk = bytearray(served.read(pos, end - pos))
            if served.corrupt_at is not None and pos <= served.corrupt_at < pos + len(chunk):
                chunk[served.corrupt_at - pos] ^= 0xFF
            cut = served.cut_after
            if cut is not None and pos + len(chunk) > cut:
                served.cut_after = None  # once
                await resp.write(bytes(chunk[: cut - pos]))
                self.sent[key] = self.sent.get(key, 0) + cut - pos
                if served.etag_after_cut:
                    served.etag = served.etag_after_cut
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write(bytes(chunk))
            self.sent[key] = self.sent.get(key, 0) + len(chunk)
            pos += len(chunk)
        await resp.write_eof()
        return resp


async def start(hub: Hub) -> web.AppRunner:
    runner = web.AppRunner(hub.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hub.url = f"http://{host}:{port}"
    return runner
