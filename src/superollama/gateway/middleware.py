"""The data plane's one per-request middleware: request id, authentication, in-flight accounting, and —
when the request ends — one ``RequestRecord`` for telemetry and the rate limiter's settlement.

Who may call what is decided here, by the key's role: ``/admin/*`` needs an admin key; ``/metrics``
needs a key with the admin or metrics role wherever the data plane needs a key; ``/v1/*``, ``/v2/*``
(rerank) and ``/api/*`` take any key but a metrics key. ``POST /admin/v1/nodes/join`` takes no API key:
its handler checks the join token it is sent (``admin/join.py``). ``/metrics`` is recognised by the route that
matched, not by the path's spelling.

It sits outside the error middleware, so it sees the status the client got. Nothing here awaits I/O on
the way in (the key check is an in-memory lookup); settlements run after the response, one task per
turn of the loop.

The object is the middleware itself (aiohttp calls it as ``middleware(request, handler=...)``), and it
asks ``too_large`` (the 413 for a declared body over the limit) before anything else: neither a closure
around a bound method nor a middleware of its own for those three lines, since each is one more coroutine
that every request enters and every await of it passes through. A 413 so refused is not metered, as
before (``refuse_oversized`` stood outside this middleware).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import ClassVar

from aiohttp import hdrs, web

from superollama.contract.nodes import JOIN_PATH
from superollama.core import RequestRecord
from superollama.errors import SuperOllamaError
from superollama.gateway.errors import error_response
from superollama.gateway.exchange import EXCHANGE, Exchange, Observer, exchange_of
from superollama.gateway.listener import too_large
from superollama.security import Security

__all__ = ["ANSWER_HEADERS", "AnswerHeaders", "NullObserver", "RequestIds", "RequestMiddleware"]

log = logging.getLogger("superollama.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_PREFIXES = (
    ("/v1/messages", "anthropic"),
    ("/v1/", "openai"),
    ("/v2/", "openai"),  # Cohere's /v2/rerank: the OpenAI edge's keys, limits and error shape
    ("/api/", "ollama"),
    ("/admin/", "admin"),
)
METRICS_PATH = "/metrics"
_NO_COOKIES: Mapping[str, str] = MappingProxyType({})


class NullObserver:
    capture_content = False

    def record(self, record: RequestRecord) -> None:
        pass

    def inflight(self, delta: int) -> None:
        pass


def _protocol(path: str) -> str | None:
    """The API edge a path belongs to (None: not a metered edge)."""
    for prefix, name in _PREFIXES:
        if path.startswith(prefix):
            return name
    return None


class RequestIds:
    """Request ids: 128 random bits each, as uuid4, from the OS's generator, drawn 256 at a time.

    ``os.urandom`` per request was one system call per request that also let go of the GIL: with the
    ledger's and the registry's threads about, taking it back cost a hand-off (futex) on most requests."""

    __slots__ = ("_at", "_pool")

    _BATCH = 256

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(16 * self._BATCH), 0
        self._at = at + 16
        return self._pool[at : at + 16].hex()


class RequestMiddleware:
    """The middleware (see the module's docstring). ``refuse_oversized``: ask ``too_large`` first (False
    where the app already put ``refuse_oversized`` before a middleware of its own, as the replicas do)."""

    __middleware_version__: ClassVar[int] = 1  # aiohttp's mark of a new-style middleware

    def __init__(
        self, security: Security, observer: Observer, node: str, *, refuse_oversized: bool = True
    ) -> None:
        self._security = security
        self._observer = observer
        self._node = node
        self._refuse_oversized = refuse_oversized
        self._settling: set[asyncio.Task[None]] = set()
        self._owed: list[Awaitable[None]] = []  # settlements of ended requests left to send
        self._ids = RequestIds()

    def middleware(self) -> RequestMiddleware:
        """What goes in the app's ``middlewares``: this object."""
        return self

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._refuse_oversized and (refused := too_large(request)) is not None:
            return refused
        protocol = _protocol(request.path)
        if protocol is None:
            if _is_metrics(request):
                return await self._metrics(request, handler)
            return await handler(request)
        request_id = request.headers.get("X-Request-Id") or self._ids.next()
        ex = Exchange(request_id=request_id, protocol=protocol)
        ex.capture = self._observer.capture_content
        request[EXCHANGE] = ex
        try:
            if protocol == "admin" and request.method == "POST" and request.path == JOIN_PATH:
                ex.principal = None  # a join token, not an API key, authenticates it (admin/join.py)
            elif protocol == "admin":
                security = self._security
                ex.principal = security.authenticate_request(
                    request.method, request.headers, _cookies(request), required=security.admin_required
                )
                security.require_admin(ex.principal, request.method)
            else:
                ex.principal = self._security.authenticate_request(
                    request.method, request.headers, _cookies(request)
                )
                self._security.require_models(ex.principal)
        except SuperOllamaError as exc:
            ex.error_type, ex.error = exc.code or exc.type, exc.message
            rejected = error_response(exc, ollama=protocol == "ollama", anthropic_api=protocol == "anthropic")
            self._finish(request, ex, rejected.status)
            return rejected
        self._observer.inflight(1)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status, ex.error_type = 499, "client_closed"
            raise
        finally:
            self._observer.inflight(-1)
            self._finish(request, ex, status)

    async def _metrics(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """``GET /metrics``: 401 without a key where one is needed, 403 for a key of neither the admin
        nor the metrics role. Scrapes are not metered."""
        try:
            principal = self._security.authenticate(request.headers)
            self._security.require_metrics_reader(principal)
        except SuperOllamaError as exc:
            return error_response(exc)
        return await handler(request)

    def _finish(self, request: web.Request, ex: Exchange, status: int) -> None:
        if ex.protocol == "admin":
            return  # the admin API is audited through events, not metered
        record = ex.finish(
            status,
            node=self._node,
            client=request.remote,
            user_agent=request.headers.get("User-Agent"),
        )
        try:
            self._observer.record(record)
        except Exception:
            log.exception("telemetry failed to record %s", ex.request_id)
        if ex.admission is not None and ex.admission.principal is not None:  # nothing to settle without a key
            try:
                rest = self._security.settle_soon(ex.admission, record)
            except Exception as exc:
                log.warning("rate-limit settlement failed: %s", exc)
                return
            if rest is None:  # settled (or owed to the limiter's next batched round trip)
                return
            if not self._owed:
                asyncio.get_running_loop().call_soon(self._settle_owed)
            self._owed.append(rest)

    def _settle_owed(self) -> None:
        """One task awaits the settlements left to send by requests that ended in this turn of the loop
        (not a task each)."""
        owed, self._owed = self._owed, []
        if owed:
            task = asyncio.get_running_loop().create_task(self._settle(owed))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _settle(self, owed: list[Awaitable[None]]) -> None:
        for rest in owed:
            try:
                await rest
            except Exception as exc:
                log.warning("rate-limit settlement failed: %s", exc)

    async def close(self) -> None:
        """Wait for pending settlements (clean shutdown)."""
        self._settle_owed()
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)


def _cookies(request: web.Request) -> Mapping[str, str]:
    """The request's cookies; none parsed when it sent no ``Cookie`` header (an API client's request:
    aiohttp's ``cookies`` builds a parser and a mapping even for no header, ~1 % of a request's CPU)."""
    return request.cookies if hdrs.COOKIE in request.headers else _NO_COOKIES


def _is_metrics(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return request.path == METRICS_PATH or (
        resource is not None and getattr(resource, "canonical", None) == METRICS_PATH
    )


class AnswerHeaders:
    """The app's one ``on_response_prepare`` callback (``AnswerHeaders.of(app)``): the headers every answer
    carries (``fixed``: which gateway, which worker) and those of the request's exchange (request id,
    rate limits, the instance that answered), streamed answers included. One callback for all of them:
    aiohttp awaits each callback in turn on every answer."""

    __slots__ = ("fixed",)

    def __init__(self) -> None:
        self.fixed: dict[str, str] = {}

    @classmethod
    def of(cls, app: web.Application) -> AnswerHeaders:
        """The app's callback, installed on first use (before the app is frozen)."""
        installed = app.get(ANSWER_HEADERS)
        if installed is None:
            installed = app[ANSWER_HEADERS] = cls()
            app.on_response_prepare.append(installed)
        return installed

    async def __call__(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        if self.fixed:
            headers.update(self.fixed)
        ex = exchange_of(request)
        if ex is not None:
            headers["X-Request-Id"] = ex.request_id
            if ex.protocol == "anthropic":
                headers["request-id"] = ex.request_id  # what the Anthropic SDKs read
            for name, value in ex.headers.items():
                headers.setdefault(name, value)


ANSWER_HEADERS = web.AppKey("superollama_answer_headers", AnswerHeaders)
