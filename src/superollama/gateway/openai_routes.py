"""``/v1/*``: the OpenAI API on the data plane. One small handler per endpoint, one shared path:

read body (bounded) → check → look up the snapshot → wait for a slot of the route (bounded queue) → pick
(or start) an instance whose breaker is not open → relay, retried on another instance when that is safe
(``Lease``) → on a 5xx, a timeout or a context-length error, the same with the route's fallbacks in order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Protocol

import orjson
from aiohttp import web

from superollama.core.images import has_image_parts
from superollama.core.routing import (
    SESSION_HEADER,
    Deployment,
    Route,
    RouteTarget,
    RoutingHolder,
    RoutingTable,
    pick_instance,
)
from superollama.errors import InvalidRequest, ModelNotFound, SuperOllamaError, Unavailable
from superollama.gateway.exchange import EXCHANGE, Exchange, exchange_of, principal_of
from superollama.gateway.images import ImageInputs
from superollama.gateway.lease import Lease
from superollama.gateway.relay import Declined, Relay, too_long
from superollama.gateway.resilience import Resilience
from superollama.gateway.responses import json_response as _json
from superollama.gateway.seams import InstanceAccounting, InstanceStarter
from superollama.gateway.shadow import ShadowMirror, ShadowTap
from superollama.security import Admission, Principal, Security, estimate_tokens
from superollama.wire import openai as wire

__all__ = ["OPENAI_MISSING", "GroundedChat", "ModelTargets", "OpenAIRoutes", "read_json"]

log = logging.getLogger("superollama.gateway.openai")

Check = Callable[[Mapping[str, Any]], None]
OPENAI_MISSING = "The model '{name}' does not exist"
TARGET_HEADER = "X-Superollama-Target"


class ModelTargets:
    """Shared by every API edge: a client's model name → its route → a ready instance, with accounting.

    ``route`` raises ``ModelNotFound`` with the edge's own wording; ``pick`` starts an instance when none
    is ready (scale from zero); ``hold`` picks and counts the request in flight until it is done (on a
    replacement, if its instance died before the request reached it: see ``Lease``).

    Scope: a model outside the caller's key patterns is, to that caller, a model that does not exist —
    ``route`` answers exactly the missing-model error (same status, code and message, naming what was
    asked), before anything else is looked at (enabled, loaded, rate limits), and the listings leave it
    out. That is the only way a key cannot learn which models exist beyond its own.
    """

    def __init__(
        self,
        holder: RoutingHolder,
        controller: InstanceStarter,
        agent: InstanceAccounting,
        security: Security,
        resilience: Resilience | None = None,
        *,
        images: ImageInputs | None = None,
    ) -> None:
        self.holder = holder
        self.controller = controller
        self.agent = agent
        self.security = security
        self.resilience = resilience if resilience is not None else Resilience()
        self.images = images if images is not None else ImageInputs()  # every edge's image step
        holder.subscribe(self._snapshot)

    def _snapshot(self, table: RoutingTable) -> None:
        """A new routing snapshot: breakers of instances it no longer has are dropped."""
        breakers = self.resilience.guard.breakers
        if breakers.states():
            breakers.retain({t.instance_id for r in table.routes.values() for t in r.targets})

    def route(
        self,
        principal: Principal | None,
        name: str,
        missing: str = OPENAI_MISSING,
        disabled: str = "The model '{name}' is disabled",
        *,
        request: web.Request | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Route:
        """The enabled route ``name`` resolves to for ``principal`` (None: no key, or a caller that was
        checked already, as the primary's ``ensure`` for a replica). A deployment's name resolves to the
        route of one of its targets, picked by weight (sticky by the body's ``user``, the session header
        of ``request`` or the key, as the deployment says)."""
        table = self.holder.table
        dep = table.deployment(name) if table.deployments else None
        if dep is not None:
            return self._deployed(
                principal, dep, missing=missing, disabled=disabled, request=request, body=body
            )
        route = self.find(principal, name)
        if route is None:
            raise ModelNotFound(missing.format(name=name), param="model")
        if not route.enabled:
            raise ModelNotFound(disabled.format(name=name), param="model")
        return route

    def _deployed(
        self,
        principal: Principal | None,
        dep: Deployment,
        *,
        missing: str,
        disabled: str,
        request: web.Request | None,
        body: Mapping[str, Any] | None,
    ) -> Route:
        if not self.security.may_see(principal, dep.name):
            raise ModelNotFound(missing.format(name=dep.name), param="model")
        if not dep.enabled:
            raise ModelNotFound(disabled.format(name=dep.name), param="model")
        user = body.get("user") if body is not None and dep.sticky == "user" else None
        session = request.headers.get(SESSION_HEADER) if request is not None else None
        key = principal.key_id if principal is not None else None
        route = dep.pick(user if isinstance(user, str) else None, session, key)
        if route is None:
            raise Unavailable(f"deployment {dep.name!r} has no target with weight now", retry_after=5)
        return route

    def find(self, principal: Principal | None, name: str) -> Route | None:
        """The route ``name`` resolves to (enabled or not) if the caller may see it, else None."""
        route = self.holder.table.lookup(name)
        if route is None or not self.security.may_see(principal, route.name):
            return None
        return route

    def visible(self, request: web.Request) -> list[Route]:
        """The enabled routes the caller's key may use, by name."""
        routes = {r.name: r for r in self.holder.table.enabled()}
        names = self.security.visible_models(principal_of(request), routes)
        return [routes[n] for n in sorted(names)]

    def visible_deployments(self, request: web.Request) -> list[Deployment]:
        """The enabled deployments (each stage by its client name) the caller's key may use, by name."""
        deps = {d.name: d for d in self.holder.table.enabled_deployments()}
        names = self.security.visible_models(principal_of(request), deps)
        return [deps[n] for n in sorted(names)]

    def fallbacks(
        self,
        principal: Principal | None,
        route: Route,
        *,
        request: web.Request | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> list[Route]:
        """The enabled routes to try, in order, after ``route`` fails (those the caller may see; a
        deployment's name resolves as a client's would; one level: a fallback's own fallbacks are not
        followed)."""
        chain = []
        for name in self.resilience.fallbacks(route):
            try:
                other = self.route(principal, name, request=request, body=body)
            except (ModelNotFound, Unavailable):
                continue
            if other.name != route.name:
                chain.append(other)
        return chain

    async def pick(self, route: Route, *, elsewhere: bool = False) -> RouteTarget:
        """Of the ready instances whose breaker is not open, the less loaded of two drawn at random;
        started when there is none. When every breaker is open: a 503 (until the first may be probed) if
        the request has somewhere else to go (``elsewhere``: a fallback), else any of them anyway (a
        request that may fail beats one refused for sure)."""
        target = self.pick_ready(route, elsewhere=elsewhere)
        return target if target is not None else await self.controller.ensure_ready(route)

    def pick_ready(self, route: Route, *, elsewhere: bool = False) -> RouteTarget | None:
        """``pick`` among the route's ready targets; None when it has none (to be started)."""
        if not route.targets:
            return None
        breakers = self.resilience.guard.breakers
        ready = tuple(t for t in route.targets if breakers.available(t.instance_id))
        if not ready:
            if elsewhere:
                wait = min(breakers.retry_after(t.instance_id) for t in route.targets)
                raise Unavailable(
                    f"every instance of {route.name!r} failed repeatedly: not sending to them for now",
                    retry_after=max(1.0, wait),
                )
            ready = route.targets
        return pick_instance(ready, self.agent.in_flight)

    def with_fallbacks(
        self,
        request: web.Request,
        route: Route,
        attempt: Callable[[Route, bool], Awaitable[web.StreamResponse]],
    ) -> Awaitable[web.StreamResponse]:
        """``attempt(route, more)``, then with each fallback in turn while it fails in a way a fallback may
        answer better (``more``: one remains): an answer ``Declined`` by the relay, no answer or a
        timeout (``Unavailable``: breakers open and queues full too), or a prompt over the context.
        A route with no fallback (the common case) is just its attempt, with no coroutine around it."""
        more = self.fallbacks(principal_of(request), route, request=request)
        if not more:
            return attempt(route, False)
        return self._down_the_chain(request, [route, *more], attempt)

    async def _down_the_chain(
        self,
        request: web.Request,
        chain: list[Route],
        attempt: Callable[[Route, bool], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        route = chain[0]
        for i, current in enumerate(chain):
            more = i + 1 < len(chain)
            try:
                return await attempt(current, more)
            except Declined as declined:
                failure = declined.reason
            except SuperOllamaError as exc:
                if not more or not _falls_back(exc):
                    raise
                failure = exc.code or exc.type
            log.info("%s failed (%s): falling back to %s", current.name, failure, chain[i + 1].name)
            self.resilience.fell_back(route.name, chain[i + 1].name)
            _fell_back(request, chain[i + 1])
        raise AssertionError("the last route answers or raises")  # pragma: no cover

    async def admit(
        self, request: web.Request, route: Route, body: Mapping[str, Any], operation: str
    ) -> None:
        """Model permission, budget and rate limit for this request (403 / 429), recorded on its exchange."""
        pending = self.admit_soon(request, route, body, operation)
        if pending is not None:
            await pending

    def admit_soon(
        self, request: web.Request, route: Route, body: Mapping[str, Any], operation: str
    ) -> Awaitable[None] | None:
        """``admit`` as far as it goes without waiting; what is left to await, if anything (a round trip
        of the rate limiter: ``Security.admit_soon``). Most requests are admitted here, with no coroutine."""
        ex = exchange_of(request)
        if ex is None:
            return None
        ex.model, ex.version, ex.connection = (
            str(body.get("model") or route.name),
            route.version,
            route.connection,
        )
        ex.operation, ex.stream = operation, body.get("stream") is True
        if route.deployment is not None:  # which target of the deployment answered (A/B analysis)
            ex.headers[TARGET_HEADER] = route.version
            ex.deployment, ex.target = route.deployment, route.name
        if ex.capture:
            ex.input = body.get("messages", body.get("prompt", body.get("input")))
        admission = self.security.admit_soon(
            ex.principal, route.deployment or route.name, estimate_tokens(body)
        )
        if not isinstance(admission, Admission):
            return _admitted(ex, admission)
        ex.admission = admission
        ex.headers.update(admission.headers)
        return None

    def _latest(self, route: Route) -> Route:
        """``route`` in the current snapshot. A deployment's target that lost its weight meanwhile (a swap
        drains it) is not started again for this request: it goes to a target the deployment has now."""
        table = self.holder.table
        latest = table.routes.get(route.name, route)
        if latest.targets or route.deployment is None:
            return latest
        dep = table.deployment(route.deployment)
        if dep is None or any(c.name == route.name for c in dep.choices):
            return latest
        other = dep.pick()
        return latest if other is None else other

    def hold(self, route: Route, request: web.Request | None = None, *, elsewhere: bool = False) -> Hold:
        """A ready target for the route (started if need be), counted in flight until the block ends;
        ``elsewhere``: the caller has a fallback (see ``pick``)."""
        return Hold(self, route, exchange_of(request) if request is not None else None, elsewhere)


class Hold:
    """``ModelTargets.hold``'s block: the route's slot, then a lease on a ready target, both released at
    its end. A class rather than an ``asynccontextmanager``: entered on every request, a generator-based
    one costs several microseconds more (a generator and its wrapper made, then stepped through). A route
    without a limit has no slot to enter, and a route with a ready target is picked without a coroutine."""

    __slots__ = ("_elsewhere", "_ex", "_lease", "_route", "_slot", "_targets")
    _slot: AbstractAsyncContextManager[None] | None
    _lease: Lease

    def __init__(self, targets: ModelTargets, route: Route, ex: Exchange | None, elsewhere: bool) -> None:
        self._targets = targets
        self._route = route
        self._ex = ex
        self._elsewhere = elsewhere

    async def __aenter__(self) -> Lease:
        targets, ex = self._targets, self._ex
        slot = self._slot = targets.resilience.limits.slot(self._route.name)
        if slot is not None:
            await slot.__aenter__()
        try:
            # the request waited on admission: the snapshot may have changed
            route = self._route = targets._latest(self._route)
            target = targets.pick_ready(route, elsewhere=self._elsewhere)
            if target is None:
                t0 = time.perf_counter()
                target = await targets.controller.ensure_ready(route)
                if ex is not None:
                    ex.load_wait = time.perf_counter() - t0
            if ex is not None:
                ex.instance = None if route.connection else target.instance_id
            guard = targets.resilience.guard
            self._lease = Lease(route, target, targets.controller, targets.agent, guard)
        except BaseException as exc:
            if slot is not None:
                await slot.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self._lease

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        lease, slot = self._lease, self._slot
        try:
            lease.release()
            if self._ex is not None and self._route.connection is None:
                self._ex.instance = lease.instance_id
        except BaseException as error:
            if slot is not None:
                await slot.__aexit__(type(error), error, error.__traceback__)
            raise
        return None if slot is None else await slot.__aexit__(exc_type, exc, tb)


class GroundedChat(Protocol):
    """Chat for the model names that answer from documents (``plugins/rag``): retrieval, then the chat
    path of every request."""

    def applies(self, model: str) -> bool: ...

    async def chat(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse: ...


class OpenAIRoutes:
    def __init__(
        self,
        holder: RoutingHolder,
        targets: ModelTargets,
        relay: Relay,
        grounded: GroundedChat | None = None,
        *,
        shadow: ShadowMirror | None = None,
    ) -> None:
        self._holder = holder
        self._targets = targets
        self._relay = relay
        self.grounded = grounded  # set after construction by the app factory when RAG is installed
        # shared by every edge; a lambda, since each routing snapshot is a new ``holder.table``
        self.shadow = ShadowTap(shadow, lambda name: holder.table.deployment(name))  # noqa: PLW0108

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        app.router.add_post(
            "/v1/chat/completions", self._endpoint("/v1/chat/completions", wire.check_chat, "chat")
        )
        app.router.add_post(
            "/v1/completions", self._endpoint("/v1/completions", wire.check_completion, "text_completion")
        )
        app.router.add_post(
            "/v1/embeddings", self._endpoint("/v1/embeddings", wire.check_embeddings, "embeddings")
        )

    async def list_models(self, request: web.Request) -> web.Response:
        routes = self._targets.visible(request)
        models = [(r.name, r.created, r.connection or "superollama") for r in routes]
        models += [(d.name, d.created, "superollama") for d in self._targets.visible_deployments(request)]
        return _json(wire.model_list(sorted(models)))

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        route = self._targets.route(principal_of(request), name)
        if route.deployment is not None:
            dep = self._holder.table.deployment(name)
            return _json(wire.model_object(route.deployment, dep.created if dep else 0, "superollama"))
        return _json(wire.model_object(route.name, route.created, route.connection or "superollama"))

    def _endpoint(self, path: str, check: Check, operation: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await read_json(request)
            check(body)
            if operation == "chat" and self.grounded is not None and self.grounded.applies(body["model"]):
                return await self.grounded.chat(request, body)
            route = self._targets.route(principal_of(request), body["model"], request=request, body=body)
            if operation == "chat" and has_image_parts(body.get("messages")):  # no coroutine for none
                await self._targets.images.prepare(route, body, model=body["model"])
            if (admitting := self._targets.admit_soon(request, route, body, operation)) is not None:
                await admitting  # a round trip of the rate limiter
            stream = body.get("stream") is True

            async def attempt(current: Route, more: bool) -> web.StreamResponse:
                async with self._targets.hold(current, request, elsewhere=more) as target:
                    body["model"] = target.endpoint.served_name
                    return await self._relay.forward(request, target, path, body, stream, fallback=more)

            answer = self._targets.with_fallbacks(request, route, attempt)
            return await self.shadow.around(request, route, path, body, answer)

        return handle


async def _admitted(ex: Exchange, pending: Awaitable[Admission]) -> None:
    admission = ex.admission = await pending
    ex.headers.update(admission.headers)


def _falls_back(exc: SuperOllamaError) -> bool:
    return isinstance(exc, Unavailable) or (isinstance(exc, InvalidRequest) and too_long(exc.message))


def _fell_back(request: web.Request, route: Route) -> None:
    """The exchange is now ``route``'s (usage, logs), and the client is told which model answered."""
    ex = exchange_of(request)
    if ex is not None:
        ex.version, ex.connection = route.version, route.connection
        if ex.deployment is not None:
            ex.target = route.name
        ex.headers["X-Superollama-Fallback"] = route.name


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong (413 past the size limit); the
    body as the request hooks left it, when they ran (``gateway/hooks.py``)."""
    ex: Exchange | None = request.get(EXCHANGE)  # on every /v1 and /api request: a lookup that hits
    if ex is not None and ex.body is not None:
        return ex.body
    raw = await request.read()
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body
