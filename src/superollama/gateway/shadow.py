"""Shadow traffic: a share of a deployment's requests copied to its shadow target, never answered from.

The request path only decides (one random draw against the deployment's ``shadow_percent``) and, once
the client's answer is ready, puts a small job on a bounded queue (``put_nowait``; a full queue drops the
copy and counts it: ``TargetWindows.dropped``). The client never waits for the shadow and never sees it.

Workers (``workers`` tasks) send each copy to the shadow target as a plain, non-streamed request through
the same instance pick, breakers and transports as any request, and compare the answers: latency,
length of the output, exact match, and a similarity: for embeddings the cosine of the two vectors; for
text, when ``shadow_embedding_model`` is set, the cosine of the two answers' embeddings by it. The
comparisons go to the registry in small batches (``ShadowStore``). Streamed requests are mirrored too;
their client answer is not kept, so they compare latency and the shadow's output only (``exact`` false,
``primary_length`` 0, ``error`` says so).

Every client API mirrors (``ShadowTap``, one per edge): OpenAI chat, completions and embeddings, Ollama
chat, generate and embed (translated or relayed to an Ollama server as is), Anthropic Messages and the
Responses API. The copy is the request as the edge sends it to a backend (OpenAI's shape, which every
target we route to speaks); the client's answer is read back from the edge's own shape (``answer_in``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from superollama.core.deployments import ShadowSample
from superollama.core.routing import Deployment, Route
from superollama.gateway.exchange import exchange_of
from superollama.gateway.lease import Lease
from superollama.gateway.transport import Mounts
from superollama.gateway.upstream import post_to_backend
from superollama.telemetry.windows import TargetWindows

__all__ = ["NO_SHADOW", "ShadowJob", "ShadowMirror", "ShadowStore", "ShadowTap", "answer_in", "answer_of"]

log = logging.getLogger("superollama.gateway.shadow")

STREAMED = "client answer was streamed: not compared"


class Targets(Protocol):
    """``ModelTargets``: a ready instance of a route, held while the copy is sent."""

    def hold(self, route: Route) -> AbstractAsyncContextManager[Lease]: ...

    def route(self, principal: None, name: str) -> Route: ...


class ShadowStore(Protocol):
    async def add(self, samples: Sequence[ShadowSample]) -> None: ...


@dataclass(frozen=True)
class ShadowJob:
    deployment: str
    shadow: Route
    primary: str  # the target that answered the client
    path: str
    body: dict[str, Any]
    latency: float  # the client's answer, seconds
    output: Any  # the client's answer text (or embedding), None when it was streamed


class ShadowMirror:
    def __init__(
        self,
        targets: Targets,
        backends: Mounts,
        store: ShadowStore,
        windows: TargetWindows,
        *,
        timeout: float,
        queue: int = 256,
        workers: int = 2,
        embedding_model: str | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._targets = targets
        self._backends = backends
        self._store = store
        self._windows = windows
        self._timeout = timeout
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=queue)
        self._workers = workers
        self._rand = rand
        self._embedding_model = embedding_model
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: list[ShadowSample] = []
        self.sent = 0
        self.dropped = 0

    def wants(self, deployment: Deployment | None) -> bool:
        """Whether this request is copied (a random draw against the shadow's percentage)."""
        return (
            deployment is not None
            and deployment.shadow is not None
            and self._rand() * 100 < deployment.shadow_percent
        )

    def copy(self, job: ShadowJob) -> None:
        """Queue the copy; a full queue drops it (counted)."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            self._windows.dropped(job.deployment, job.shadow.name)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"shadow-{i}") for i in range(self._workers)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush()

    async def drain(self) -> None:
        """Wait until every queued copy is sent and its comparison stored (tests, shutdown)."""
        await self._queue.join()
        await self._flush()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                sample = await self._send(job)  # not ``self._pending.append(await …)``: that list may be
                self._pending.append(sample)  # flushed by another worker while this one awaits
                self.sent += 1
                if self._queue.empty() or len(self._pending) >= 32:
                    await self._flush()
            except Exception:
                log.exception("shadow copy to %s failed", job.shadow.name)
            finally:
                self._queue.task_done()

    async def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            try:
                await self._store.add(pending)
            except Exception as exc:
                log.warning("storing %d shadow comparisons: %s", len(pending), exc)

    async def _send(self, job: ShadowJob) -> ShadowSample:
        body = dict(job.body)
        body.pop("stream_options", None)
        body["stream"] = False
        t0 = time.perf_counter()
        error: str | None = None
        output: Any = None
        try:
            async with self._targets.hold(job.shadow) as lease:
                body["model"] = lease.endpoint.served_name
                upstream = await post_to_backend(
                    self._backends, lease, job.path, orjson.dumps(body), self._timeout
                )
                async with upstream:
                    raw = await upstream.read()
                    if upstream.status >= 400:
                        error = f"HTTP {upstream.status}"
                    else:
                        output = answer_of(raw)
        except Exception as exc:
            error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        latency = time.perf_counter() - t0
        streamed = job.output is None
        close = None if error or streamed else similarity(job.output, output)
        if close is None and not error and isinstance(output, str) and isinstance(job.output, str):
            close = await self._text_similarity(job.output, output)
        return ShadowSample(
            deployment=job.deployment,
            target=job.shadow.name,
            primary_target=job.primary,
            primary_latency=job.latency,
            shadow_latency=None if error else latency,
            primary_length=0 if streamed else length_of(job.output),
            shadow_length=None if error else length_of(output),
            exact=not error and not streamed and output == job.output,
            similarity=close,
            error=error or (STREAMED if streamed else None),
        )

    async def _text_similarity(self, a: str, b: str) -> float | None:
        """Cosine of the two texts' embeddings by ``embedding_model`` (None without one, or on failure)."""
        if self._embedding_model is None:
            return None
        if a == b:
            return 1.0
        try:
            route = self._targets.route(None, self._embedding_model)
            async with self._targets.hold(route) as lease:
                body = {"model": lease.endpoint.served_name, "input": [a or " ", b or " "]}
                upstream = await post_to_backend(
                    self._backends, lease, "/v1/embeddings", orjson.dumps(body), self._timeout
                )
                async with upstream:
                    data = orjson.loads(await upstream.read()).get("data") if upstream.status < 400 else None
            if isinstance(data, list) and len(data) == 2:
                return similarity(data[0].get("embedding"), data[1].get("embedding"))
        except Exception as exc:
            log.warning("shadow similarity by %s: %s", self._embedding_model, exc)
        return None


class ShadowTap:
    """An edge's side of shadowing: ``pick`` once per request (None, the common case: no copy), then
    ``copy`` once the client's answer is ready. ``deployment`` looks a deployment up in the routing
    snapshot."""

    __slots__ = ("_deployment", "_mirror")

    def __init__(self, mirror: ShadowMirror | None, deployment: Callable[[str], Deployment | None]) -> None:
        self._mirror = mirror
        self._deployment = deployment

    def pick(self, route: Route) -> Deployment | None:
        if self._mirror is None or route.deployment is None:
            return None
        dep = self._deployment(route.deployment)
        return dep if self._mirror.wants(dep) else None

    def around(
        self,
        request: web.Request,
        route: Route,
        path: str,
        body: dict[str, Any],
        answer: Awaitable[web.StreamResponse],
    ) -> Awaitable[web.StreamResponse]:
        """``answer`` (not started yet), and a copy of ``body`` (the request in OpenAI's shape, as sent to
        ``path``) to the shadow when this request is drawn: the edges' one-liner. Not drawn (the common
        case): ``answer`` itself, with no coroutine around it for every await to pass through."""
        dep = self.pick(route)
        if dep is None:
            return answer
        return self._mirrored(request, dep, route, answer, path=path, body=dict(body))

    async def _mirrored(
        self,
        request: web.Request,
        dep: Deployment,
        route: Route,
        answer: Awaitable[web.StreamResponse],
        *,
        path: str,
        body: dict[str, Any],
    ) -> web.StreamResponse:
        started = time.perf_counter()
        response = await answer
        latency = time.perf_counter() - started
        self.copy(request, dep, route, path=path, body=body, response=response, latency=latency)
        return response

    def copy(
        self,
        request: web.Request,
        dep: Deployment,
        route: Route,
        *,
        path: str,
        body: dict[str, Any],
        response: web.StreamResponse,
        latency: float,
    ) -> None:
        """Queue the copy of a request on ``route`` (in OpenAI's shape, as sent to ``path``) once the
        client has ``response``; an error answer is not mirrored."""
        if self._mirror is None or dep.shadow is None or response.status >= 400:
            return
        ex = exchange_of(request)
        primary = (ex.target if ex is not None else None) or route.name  # the target that answered
        raw = response.body if isinstance(response, web.Response) else None
        output = answer_of(raw) if isinstance(raw, bytes) else None
        self._mirror.copy(ShadowJob(dep.name, dep.shadow, primary, path, body, latency, output))


NO_SHADOW = ShadowTap(None, lambda _name: None)  # an edge built without a mirror (unit tests, tools)


def answer_of(raw: bytes) -> Any:
    """The answer in a JSON body (``answer_in``); None when it is not JSON."""
    try:
        return answer_in(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


def answer_in(body: Any) -> Any:
    """The text of a chat or completion answer, or the first vector of an embeddings answer, in any
    client API's shape: OpenAI (chat, completions, embeddings), Ollama (chat, generate, embed), Anthropic
    Messages, Responses. None for anything else."""
    if not isinstance(body, dict):
        return None
    try:
        if isinstance(body.get("data"), list) and body["data"]:  # OpenAI embeddings
            return body["data"][0].get("embedding")
        if "choices" in body:  # OpenAI chat, completions
            choice = body["choices"][0]
            return choice["message"].get("content") if "message" in choice else choice.get("text")
        if isinstance(body.get("message"), dict):  # Ollama chat
            return body["message"].get("content")
        if isinstance(body.get("response"), str):  # Ollama generate
            return body["response"]
        if isinstance(body.get("embeddings"), list) and body["embeddings"]:  # Ollama embed
            return body["embeddings"][0]
        if isinstance(body.get("embedding"), list):  # Ollama's legacy /api/embeddings
            return body["embedding"]
        if body.get("type") == "message" and isinstance(body.get("content"), list):  # Anthropic
            return "".join(b.get("text", "") for b in body["content"] if b.get("type") == "text")
        if body.get("object") == "response" and isinstance(body.get("output"), list):  # Responses
            return "".join(
                part.get("text", "")
                for item in body["output"]
                if item.get("type") == "message"
                for part in item.get("content") or ()
                if part.get("type") == "output_text"
            )
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return None


def length_of(output: Any) -> int:
    return len(output) if isinstance(output, str | list) else 0


def similarity(a: Any, b: Any) -> float | None:
    """Cosine similarity of two embedding vectors (None for text answers)."""
    if not (isinstance(a, list) and isinstance(b, list)) or len(a) != len(b) or not a:
        return None
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return round(dot / norm, 6) if norm else None
